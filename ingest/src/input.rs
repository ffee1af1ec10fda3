//! Splits telemetry files into raw records, for offline decoding (`tidemark normalize`, replay).
//!
//! A file may hold newline-delimited JSON, one JSON document (pretty-printed or not), several
//! concatenated documents, or a JSON array of records. Each record keeps the 1-based line it
//! starts on, so errors and raw pointers name the place an analyst can open. A document that does
//! not parse is reported and skipped; reading resumes at the next line that starts a new
//! document at column 0, so one bad line does not hide the valid records after it. Blank lines
//! separate records and are not records themselves.

use serde_json::value::RawValue;

/// One piece of a file: a record to decode, or a stretch that is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A raw record and the line it starts on.
    Record {
        /// 1-based line of the record's first byte.
        line: u64,
        /// The record's bytes.
        bytes: &'a [u8],
    },
    /// Text that does not parse as JSON.
    Invalid {
        /// 1-based line where the bad document starts.
        line: u64,
        /// The parser's reason.
        reason: String,
    },
}

/// Splits `content` into records and invalid stretches, in file order.
pub fn split(content: &[u8]) -> Vec<Piece<'_>> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', content).map(|i| i + 1))
        .collect();
    let line_of = |offset: usize| -> u64 {
        let index = line_starts.partition_point(|start| *start <= offset);
        index as u64
    };
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let Some(skip) = content[pos..].iter().position(|b| !b.is_ascii_whitespace()) else {
            break;
        };
        let start = pos + skip;
        let mut stream =
            serde_json::Deserializer::from_slice(&content[start..]).into_iter::<&RawValue>();
        match stream.next() {
            Some(Ok(raw)) => {
                let end = start + stream.byte_offset();
                let text = raw.get();
                if text.starts_with('[') {
                    split_array(content, text, start, &line_of, &mut pieces);
                } else {
                    pieces.push(Piece::Record {
                        line: line_of(start),
                        bytes: &content[start..end],
                    });
                }
                pos = end;
            }
            Some(Err(error)) => {
                pieces.push(Piece::Invalid {
                    line: line_of(start),
                    reason: error.to_string(),
                });
                pos = next_document_start(content, start);
            }
            None => break,
        }
    }
    pieces
}

/// Splits a top-level array into one record per element.
fn split_array<'a>(
    content: &'a [u8],
    text: &str,
    start: usize,
    line_of: &dyn Fn(usize) -> u64,
    pieces: &mut Vec<Piece<'a>>,
) {
    match serde_json::from_str::<Vec<&RawValue>>(text) {
        Ok(items) => {
            for item in items {
                // The element borrows from `content`: its address gives its offset.
                let offset = item.get().as_ptr() as usize - content.as_ptr() as usize;
                let bytes = &content[offset..offset + item.get().len()];
                pieces.push(Piece::Record {
                    line: line_of(offset),
                    bytes,
                });
            }
        }
        Err(error) => pieces.push(Piece::Invalid {
            line: line_of(start),
            reason: error.to_string(),
        }),
    }
}

/// Returns the offset of the first line after `start` that begins, at column 0, with something
/// other than whitespace or a closing bracket: the next place a document can start.
fn next_document_start(content: &[u8], start: usize) -> usize {
    let mut pos = start;
    loop {
        let Some(newline) = memchr::memchr(b'\n', &content[pos..]) else {
            return content.len();
        };
        pos += newline + 1;
        match content.get(pos) {
            None => return content.len(),
            Some(b) if b.is_ascii_whitespace() || *b == b'}' || *b == b']' => {}
            Some(_) => return pos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pieces: &[Piece<'_>]) -> Vec<(u64, bool)> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Record { line, .. } => (*line, true),
                Piece::Invalid { line, .. } => (*line, false),
            })
            .collect()
    }

    #[test]
    fn ndjson_records_keep_their_lines() {
        let pieces = split(b"{\"a\":1}\n\n{\"b\":2}\n");
        assert_eq!(lines(&pieces), [(1, true), (3, true)]);
    }

    #[test]
    fn truncated_line_does_not_swallow_the_next() {
        let pieces = split(b"{\"a\":1}\n{\"b\":\n{\"c\":3}\n");
        assert_eq!(lines(&pieces), [(1, true), (2, false), (3, true)]);
    }

    #[test]
    fn pretty_printed_document_is_one_record() {
        let pieces = split(b"{\n  \"a\": {\n    \"b\": 1\n  }\n}\n");
        assert_eq!(lines(&pieces), [(1, true)]);
    }

    #[test]
    fn array_elements_are_records_with_their_own_lines() {
        let pieces = split(b"[\n{\"a\":1},\n{\"b\":2}\n]");
        assert_eq!(lines(&pieces), [(2, true), (3, true)]);
        let Piece::Record { bytes, .. } = &pieces[1] else {
            panic!()
        };
        assert_eq!(*bytes, b"{\"b\":2}");
    }

    #[test]
    fn garbage_lines_each_get_an_error() {
        let pieces = split(b"hello\nworld\n{\"a\":1}\n");
        assert_eq!(lines(&pieces), [(1, false), (2, false), (3, true)]);
    }

    #[test]
    fn invalid_utf8_is_an_error_and_reading_goes_on() {
        let pieces = split(b"{\"a\":\"\xff\xfe\"}\n{\"b\":2}\n");
        assert_eq!(lines(&pieces), [(1, false), (2, true)]);
    }

    #[test]
    fn bare_numbers_are_records_for_the_decoder_to_refuse() {
        let pieces = split(b"42\n");
        assert_eq!(lines(&pieces), [(1, true)]);
    }
}
