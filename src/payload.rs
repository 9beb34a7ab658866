//! The JSON contract between the producer (upload endpoint) and the consumer (task handler).

use std::io;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Path of the backend's task handler, under the service URL.
pub const PROCESS_DOCUMENT_PATH: &str = "/api/tasks/process-document";

/// Body of a document-processing task: `{"document_id": "<uuid>", "filename": "<name>"}`.
///
/// The producer serialises it with [`ProcessDocumentPayload::to_json_bytes`] and the handler
/// parses it with `serde_json::from_slice`, so the contract lives here only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDocumentPayload {
    /// The uploaded document.
    pub document_id: Uuid,
    /// Its original file name, exactly as uploaded.
    pub filename: String,
}

impl ProcessDocumentPayload {
    /// Serialises the payload byte for byte as the Python backend's `json.dumps` did
    /// (`", "` and `": "` separators, non-ASCII escaped as `\uXXXX`), so handlers and logs see
    /// the same bytes whichever producer enqueued the task.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        to_python_json(self)
    }
}

/// Serialises `value` as Python's `json.dumps` does by default.
pub(crate) fn to_python_json(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut serializer)
        .expect("serialising plain strings into a Vec cannot fail");
    out
}

/// `serde_json` formatter matching Python's `json.dumps(obj)` defaults: `ensure_ascii=True` and
/// `separators=(", ", ": ")`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Python escapes everything outside printable ASCII, as UTF-16 code units. File names
        // and IDs are almost all printable ASCII, so runs of it are written in one call rather
        // than byte by byte (this is on every enqueue's path).
        let mut rest = fragment;
        while !rest.is_empty() {
            let printable = rest
                .bytes()
                .position(|byte| !(b' '..=b'~').contains(&byte))
                .unwrap_or(rest.len());
            writer.write_all(&rest.as_bytes()[..printable])?;
            rest = &rest[printable..];
            let Some(c) = rest.chars().next() else {
                break;
            };
            let mut units = [0u16; 2];
            for &unit in c.encode_utf16(&mut units).iter() {
                writer.write_all(&unicode_escape(unit))?;
            }
            rest = &rest[c.len_utf8()..];
        }
        Ok(())
    }
}

/// `\uXXXX` (lower-case hex) for one UTF-16 code unit, as Python writes it.
fn unicode_escape(unit: u16) -> [u8; 6] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digit = |shift: u16| HEX[usize::from((unit >> shift) & 0xf)];
    [b'\\', b'u', digit(12), digit(8), digit(4), digit(0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";

    /// Expected bodies printed by Python 3.11:
    /// `json.dumps({"document_id": ID, "filename": name})`.
    #[test]
    fn bodies_match_python_json_dumps() {
        let cases = [
            (
                "report.pdf",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "report.pdf"}"#,
            ),
            (
                "quote\"and\\back.pdf",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "quote\"and\\back.pdf"}"#,
            ),
            (
                "résumé – 日本語 😀.docx",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "r\u00e9sum\u00e9 \u2013 \u65e5\u672c\u8a9e \ud83d\ude00.docx"}"#,
            ),
            (
                "tab\there\nnl",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "tab\there\nnl"}"#,
            ),
            (
                "é😀",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "\u00e9\ud83d\ude00"}"#,
            ),
            (
                "\u{7f}\u{1}",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "\u007f\u0001"}"#,
            ),
        ];
        for (filename, expected) in cases {
            let payload = ProcessDocumentPayload {
                document_id: ID.parse().unwrap(),
                filename: filename.to_owned(),
            };
            let body = payload.to_json_bytes();
            assert_eq!(String::from_utf8(body.clone()).unwrap(), expected);
            let parsed: ProcessDocumentPayload = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed, payload, "{filename:?} must round-trip");
        }
    }
}
