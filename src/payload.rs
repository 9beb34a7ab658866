//! The JSON contract between the producer (upload endpoint) and the consumer (task handler).

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
        // Written by hand because it runs on every enqueue and a Python-style serde_json formatter
        // is several times slower (PERFORMANCE.md). A new field must be added here too; the
        // round-trip test catches one that is missing unless it has a serde default.
        const START: &[u8] = b"{\"document_id\": \"";
        const MIDDLE: &[u8] = b"\", \"filename\": \"";
        const END: &[u8] = b"\"}";
        let mut id = Uuid::encode_buffer();
        let id = self.document_id.hyphenated().encode_lower(&mut id);
        let mut out = Vec::with_capacity(
            START.len() + id.len() + MIDDLE.len() + self.filename.len() + END.len(),
        );
        out.extend_from_slice(START);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(MIDDLE);
        write_python_json_string(&mut out, &self.filename);
        out.extend_from_slice(END);
        out
    }
}

/// The inside of a JSON string as Python's `json.dumps` writes it with its default
/// `ensure_ascii=True`: printable ASCII as is, the short escapes JSON has, and everything else
/// as `\uXXXX` UTF-16 code units.
fn write_python_json_string(out: &mut Vec<u8>, value: &str) {
    let mut rest = value;
    while !rest.is_empty() {
        // File names are almost all printable ASCII: copy runs of it at once.
        let plain = rest
            .bytes()
            .position(|byte| !(b' '..=b'~').contains(&byte) || byte == b'"' || byte == b'\\')
            .unwrap_or(rest.len());
        out.extend_from_slice(&rest.as_bytes()[..plain]);
        rest = &rest[plain..];
        let Some(c) = rest.chars().next() else {
            break;
        };
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            _ => {
                let mut units = [0u16; 2];
                for &unit in c.encode_utf16(&mut units).iter() {
                    out.extend_from_slice(&unicode_escape(unit));
                }
            }
        }
        rest = &rest[c.len_utf8()..];
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
                "a\u{8}\u{c}\r\u{1f}/<>&\u{2028}\u{0}z",
                r#"{"document_id": "123e4567-e89b-12d3-a456-426614174000", "filename": "a\b\f\r\u001f/<>&\u2028\u0000z"}"#,
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
