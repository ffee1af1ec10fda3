//! Hostile input never panics: every bad record becomes a decode error with a reason, and the
//! valid records around it still decode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tidemark_ingest::decode::{self, DEFAULT_MAX_RECORD_BYTES, InputFormat, RecordContext};
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1::RawPointer;

fn ctx() -> RecordContext {
    RecordContext::new(
        RawPointer {
            topic: "hostile".into(),
            ..Default::default()
        },
        1,
    )
}

fn samples() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/samples");
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(std::fs::read(path).unwrap());
            }
        }
    }
    files.sort();
    assert!(files.len() >= 18, "all samples found");
    files
}

fn reason(bytes: &[u8]) -> String {
    decode::decode(bytes, InputFormat::Auto, &ctx())
        .expect_err("hostile record is refused")
        .reason
}

#[test]
fn truncated_samples_are_errors_at_every_cut() {
    for sample in samples() {
        let first_record = input::split(&sample)
            .into_iter()
            .find_map(|p| match p {
                Piece::Record { bytes, .. } => Some(bytes.to_vec()),
                Piece::Invalid { .. } => None,
            })
            .unwrap();
        for cut in (1..first_record.len()).step_by(7) {
            let truncated = &first_record[..cut];
            if truncated.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let result = decode::decode(truncated, InputFormat::Auto, &ctx());
            let error = result.expect_err("a truncated object never decodes");
            assert!(!error.reason.is_empty());
        }
    }
}

#[test]
fn wrong_types_are_errors_naming_the_format() {
    let cases: [(&[u8], &str); 5] = [
        (br#"{"rule":7,"output_fields":{}}"#, "falco"),
        (br#"{"auditID":5,"verb":"create"}"#, "k8s-audit"),
        (
            br#"{"events":"push","action":"push","target":1}"#,
            "distribution",
        ),
        (br#"{"push_data":[],"repository":{}}"#, "docker-hub"),
        (
            br#"{"eventSource":1,"eventName":"RunTask","eventTime":"x"}"#,
            "cloudtrail",
        ),
    ];
    for (record, format) in cases {
        let error = decode::decode(record, InputFormat::Auto, &ctx()).unwrap_err();
        assert_eq!(error.format.map(|f| f.name()), Some(format), "{error}");
        assert!(
            error.to_string().starts_with(&format!("`{format}`")),
            "{error}"
        );
    }
}

#[test]
fn two_megabyte_strings_are_refused_by_size() {
    let big = "A".repeat(2 * 1024 * 1024);
    let record = format!(
        r#"{{"rule":"x","time":"2026-01-01T00:00:00Z","output_fields":{{"proc.cmdline":"{big}"}}}}"#
    );
    assert!(reason(record.as_bytes()).contains("exceeds the limit"));

    // Under a raised limit the same record decodes: size, not content, was the problem.
    let mut context = ctx();
    context.max_record_bytes = 4 * DEFAULT_MAX_RECORD_BYTES;
    let decoded = decode::decode(record.as_bytes(), InputFormat::Auto, &context).unwrap();
    assert_eq!(decoded.signals.len(), 1);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 5_000;
    let mut record = String::from(r#"{"auditID":"a","verb":"create","requestObject":"#);
    record.push_str(&"[".repeat(depth));
    record.push_str(&"]".repeat(depth));
    record.push('}');
    assert!(reason(record.as_bytes()).contains("deeper than"));

    let mut nested = "{\"a\":".repeat(depth);
    nested.push('1');
    nested.push_str(&"}".repeat(depth));
    for format in [InputFormat::Auto, InputFormat::K8sAudit, InputFormat::Falco] {
        let error = decode::decode(nested.as_bytes(), format, &ctx()).unwrap_err();
        assert!(error.reason.contains("deeper than"), "{error}");
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    let record = b"{\"rule\":\"\xff\xfe\",\"output_fields\":{},\"time\":\"2026-01-01T00:00:00Z\"}";
    assert!(reason(record).contains("invalid"), "{}", reason(record));
    assert!(!reason(&[0xff, 0xfe, 0x00]).is_empty());
}

#[test]
fn bare_values_and_empty_records_are_errors() {
    assert_eq!(reason(b"12345"), "record is not a JSON object");
    assert_eq!(reason(b"-1.5e300"), "record is not a JSON object");
    assert_eq!(reason(b"\"a string\""), "record is not a JSON object");
    assert_eq!(reason(b""), "empty record");
    assert_eq!(reason(b"\n\n"), "empty record");
    assert!(reason(b"[1,2]").contains("element 0"));
}

#[test]
fn valid_records_after_hostile_lines_still_decode() {
    let falco = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/samples/falco/channels.md.line170.json"),
    )
    .unwrap();
    let falco = String::from_utf8(falco).unwrap().trim().to_owned();
    let mut file = Vec::new();
    for hostile in [
        &b"{\"rule\":\"trunc"[..],
        b"42",
        b"",
        b"\xff\xfe not json",
        b"{\"hello\":\"world\"}",
        b"{\"rule\":7,\"output_fields\":{}}",
    ] {
        file.extend_from_slice(hostile);
        file.push(b'\n');
        file.extend_from_slice(falco.as_bytes());
        file.push(b'\n');
    }
    let mut decoded = 0;
    let mut failed = 0;
    for piece in input::split(&file) {
        match piece {
            Piece::Record { bytes, .. } => match decode::decode(bytes, InputFormat::Auto, &ctx()) {
                Ok(result) => decoded += result.signals.len(),
                Err(_) => failed += 1,
            },
            Piece::Invalid { .. } => failed += 1,
        }
    }
    assert_eq!(decoded, 6, "every valid alert decodes");
    assert_eq!(failed, 5, "every non-empty hostile line is reported");
}

#[test]
fn random_mutations_of_samples_never_panic() {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let interesting = [
        b'{', b'}', b'[', b']', b'"', b'\\', b':', b',', b'0', 0xff, b'\n',
    ];
    for sample in samples() {
        for _ in 0..300 {
            let mut mutated = sample.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % mutated.len();
                match next() % 3 {
                    0 => mutated[at] = interesting[(next() as usize) % interesting.len()],
                    1 => {
                        mutated.remove(at);
                    }
                    _ => mutated.insert(at, interesting[(next() as usize) % interesting.len()]),
                }
                if mutated.is_empty() {
                    break;
                }
            }
            for piece in input::split(&mutated) {
                if let Piece::Record { bytes, .. } = piece
                    && let Err(error) = decode::decode(bytes, InputFormat::Auto, &ctx())
                {
                    assert!(!error.reason.is_empty());
                }
            }
        }
    }
}
