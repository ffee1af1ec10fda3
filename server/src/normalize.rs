//! `tidemark normalize`: decode telemetry files offline, print signals as NDJSON.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::RawPointer;

/// Decodes every file and prints one signal per line on standard output; reports each record
/// that fails on standard error. Returns whether every record decoded.
pub(crate) fn run(files: &[PathBuf], format: &str, cluster: &str) -> anyhow::Result<bool> {
    let format = InputFormat::ALL
        .into_iter()
        .find(|f| f.name() == format)
        .with_context(|| format!("unknown format `{format}`"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut stderr = std::io::stderr().lock();
    let mut all_decoded = true;
    for file in files {
        let (name, content) = read(file)?;
        for piece in input::split(&content) {
            let (line, bytes) = match piece {
                Piece::Record { line, bytes } => (line, bytes),
                Piece::Invalid { line, reason } => {
                    all_decoded = false;
                    writeln!(stderr, "{name}:{line}: invalid JSON: {reason}")?;
                    continue;
                }
            };
            let pointer = RawPointer {
                topic: name.clone(),
                line,
                ..Default::default()
            };
            let mut ctx = RecordContext::new(pointer, now);
            ctx.cluster = cluster.to_owned();
            match decode::decode(bytes, format, &ctx) {
                Ok(decoded) => {
                    for signal in decoded.signals {
                        serde_json::to_writer(&mut out, &signal)?;
                        out.write_all(b"\n")?;
                    }
                }
                Err(error) => {
                    all_decoded = false;
                    writeln!(stderr, "{name}:{line}: {error}")?;
                }
            }
        }
    }
    out.flush()?;
    Ok(all_decoded)
}

fn read(file: &Path) -> anyhow::Result<(String, Vec<u8>)> {
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
