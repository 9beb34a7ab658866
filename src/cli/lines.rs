//! Reads a JSON-lines input line by line in bounded memory, reporting each line it cannot
//! read (invalid UTF-8, too long) instead of failing the whole input.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line accepted, newline excluded. A document's line is about 80 bytes; a line
/// this long is not one document, and a file without newlines is never held whole.
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A line-by-line reader that keeps at most [`MAX_LINE_BYTES`] of a line.
///
/// [`LineReader::next_line`] is cancel safe: bytes taken from the input stay in the reader
/// until their line is complete, so it can wait beside other events in `tokio::select!`.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    input: R,
    /// The current line's first bytes: all of it, or `MAX_LINE_BYTES + 2` (room for `\r\n`).
    kept: Vec<u8>,
    /// The current line's length so far, newline included.
    length: usize,
    /// `kept` holds a line already returned, to be cleared on the next call.
    returned: bool,
    /// Lines returned so far.
    number: u64,
    bytes_read: u64,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub(crate) fn new(input: R) -> Self {
        Self {
            input,
            kept: Vec::new(),
            length: 0,
            returned: false,
            number: 0,
            bytes_read: 0,
        }
    }

    /// Bytes taken from the input so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next line's number and its text without the line ending (and without a leading
    /// byte order mark on line 1), or why the line cannot be read; `None` at the end of the
    /// input. An error is an I/O error of the input itself.
    pub(crate) async fn next_line(&mut self) -> io::Result<Option<(u64, Result<&str, String>)>> {
        if self.returned {
            self.kept.clear();
            self.length = 0;
            self.returned = false;
        }
        loop {
            let available = self.input.fill_buf().await?;
            if available.is_empty() {
                if self.length == 0 {
                    return Ok(None);
                }
                break;
            }
            let (chunk, complete) = match available.iter().position(|&byte| byte == b'\n') {
                Some(end) => (&available[..=end], true),
                None => (available, false),
            };
            let room = (MAX_LINE_BYTES + 2).saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let taken = chunk.len();
            self.length += taken;
            self.bytes_read += taken as u64;
            self.input.consume(taken);
            if complete {
                break;
            }
        }
        self.returned = true;
        self.number += 1;
        Ok(Some((self.number, self.text())))
    }

    fn text(&self) -> Result<&str, String> {
        let mut line = self.kept.as_slice();
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.length > self.kept.len() || line.len() > MAX_LINE_BYTES {
            return Err(format!(
                "the line is longer than the limit of {} MiB: put one document per line",
                MAX_LINE_BYTES / (1024 * 1024)
            ));
        }
        if self.number == 1 {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        std::str::from_utf8(line).map_err(|error| {
            format!(
                "the line is not valid UTF-8 (at byte {}): save the input as UTF-8",
                error.valid_up_to() + 1
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], capacity: usize) -> Vec<(u64, Result<String, String>)> {
        let mut reader = LineReader::new(tokio::io::BufReader::with_capacity(capacity, input));
        let mut lines = Vec::new();
        while let Some((number, text)) = reader.next_line().await.unwrap() {
            lines.push((number, text.map(str::to_owned)));
        }
        assert_eq!(reader.bytes_read(), input.len() as u64);
        lines
    }

    #[tokio::test]
    async fn lines_are_numbered_and_their_endings_and_a_leading_bom_removed() {
        for capacity in [1, 3, 64 * 1024] {
            let lines = read_all(b"\xEF\xBB\xBFone\r\n\ntwo\n\xEF\xBB\xBFthree", capacity).await;
            assert_eq!(
                lines,
                [
                    (1, Ok("one".to_owned())),
                    (2, Ok(String::new())),
                    (3, Ok("two".to_owned())),
                    // Only the file's first bytes can be a byte order mark.
                    (4, Ok("\u{FEFF}three".to_owned())),
                ],
                "buffer of {capacity} bytes"
            );
        }
    }

    #[tokio::test]
    async fn invalid_utf8_fails_its_line_only() {
        let lines = read_all(b"ok\nbad \xFF line\nlast\n", 4).await;
        assert_eq!(lines[0], (1, Ok("ok".to_owned())));
        assert_eq!(lines[1].0, 2);
        let error = lines[1].1.as_ref().unwrap_err();
        assert!(error.contains("not valid UTF-8 (at byte 5)"), "{error}");
        assert_eq!(lines[2], (3, Ok("last".to_owned())));
    }

    #[tokio::test]
    async fn a_line_over_the_limit_fails_alone_and_is_not_kept_whole() {
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE_BYTES));
        input.extend(b"\n");
        input.extend(std::iter::repeat_n(b'y', MAX_LINE_BYTES));
        input.extend(b"\r\nend");
        let mut reader = LineReader::new(tokio::io::BufReader::new(input.as_slice()));
        assert_eq!(reader.next_line().await.unwrap().unwrap(), (1, Ok("first")));
        let (number, long) = reader.next_line().await.unwrap().unwrap();
        assert_eq!(number, 2);
        let error = long.unwrap_err();
        assert!(error.contains("longer than the limit of 1 MiB"), "{error}");
        assert!(reader.kept.len() <= MAX_LINE_BYTES + 2);
        // Exactly at the limit is accepted, whatever the line ending.
        let (number, at_limit) = reader.next_line().await.unwrap().unwrap();
        assert_eq!((number, at_limit.unwrap().len()), (3, MAX_LINE_BYTES));
        assert_eq!(reader.next_line().await.unwrap().unwrap(), (4, Ok("end")));
        assert!(reader.next_line().await.unwrap().is_none());
    }
}
