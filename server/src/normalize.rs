//! `tidemark normalize`: decode telemetry files offline, print signals as NDJSON.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::{RawPointer, Signal};

/// Decodes every file and prints one signal per line on standard output; reports each record
/// that fails on standard error. Returns whether every record decoded.
pub(crate) fn run(files: &[PathBuf], format: &str, cluster: &str) -> anyhow::Result<bool> {
    let format = InputFormat::ALL
        .into_iter()
        .find(|f| f.name() == format)
        .with_context(|| format!("unknown format `{format}`"))?;
    let now = tidemark_common::time::now_unix_nano();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut stderr = std::io::stderr().lock();
    let mut all_decoded = true;
    for file in files {
        let (name, content) = read(file)?;
        all_decoded &= decode_content(
            &name,
            &content,
            format,
            cluster,
            now,
            &mut stderr,
            |signal| {
                serde_json::to_writer(&mut out, &signal)?;
                out.write_all(b"\n")?;
                Ok(())
            },
        )?;
    }
    out.flush()?;
    Ok(all_decoded)
}

/// Decodes every record of one file's `content`, hands each signal to `on_signal`, and reports
/// each record that fails on `errors` as `FILE:LINE: reason`. Returns whether every record
/// decoded.
pub(crate) fn decode_content(
    name: &str,
    content: &[u8],
    format: InputFormat,
    cluster: &str,
    now: i64,
    errors: &mut impl Write,
    mut on_signal: impl FnMut(Signal) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let mut all_decoded = true;
    for piece in input::split(content) {
        let (line, bytes) = match piece {
            Piece::Record { line, bytes } => (line, bytes),
            Piece::Invalid { line, reason } => {
                all_decoded = false;
                writeln!(errors, "{name}:{line}: invalid JSON: {reason}")?;
                continue;
            }
        };
        let pointer = RawPointer {
            topic: name.to_owned(),
            line,
            ..Default::default()
        };
        let mut ctx = RecordContext::new(pointer, now);
        ctx.cluster = cluster.to_owned();
        match decode::decode(bytes, format, &ctx) {
            Ok(decoded) => decoded.signals.into_iter().try_for_each(&mut on_signal)?,
            Err(error) => {
                all_decoded = false;
                writeln!(errors, "{name}:{line}: {error}")?;
            }
        }
    }
    Ok(all_decoded)
}

/// Reads a whole file, or standard input for `-`; returns the name to report it by and its bytes.
pub(crate) fn read(file: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let mut content = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut content)
            .context("failed to read standard input")?;
        return Ok(("-".to_owned(), content));
    }
    if file.is_dir() {
        bail!("`{}` is a directory, not a telemetry file", file.display());
    }
    content =
        std::fs::read(file).with_context(|| format!("failed to read `{}`", file.display()))?;
    Ok((file.display().to_string(), content))
}
