//! Server-Sent Events: an incremental parser for upstream streams and the
//! framing for events the gateway writes itself.
//!
//! Only what MCP uses: `data` (joined with `\n` across lines), `event` and
//! `id`; `retry` and comments are skipped. Lines end in `\n`, `\r\n` or `\r`.

use bytes::{Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// Feed bytes as they arrive; take complete events out.
#[derive(Default)]
pub(crate) struct Parser {
    buf: BytesMut,
    current: Event,
    has_data: bool,
    /// A `\r` ended the last chunk; a following `\n` belongs to it.
    pending_cr: bool,
    /// Bytes at the front of `buf` already searched for a line end: a long
    /// line arriving in many reads is scanned once, not once per read.
    scanned: usize,
    /// The stream's last event id (set by any `id:` field, also of events
    /// without data such as a priming event): what a resumption sends as
    /// `Last-Event-ID`.
    last_id: Option<String>,
    /// The reconnection time the server asked for (`retry:`), in ms.
    retry_ms: Option<u64>,
}

impl Parser {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held for events not complete yet (bounded by callers, so an
    /// upstream that never ends an event cannot grow it forever).
    pub(crate) fn pending_bytes(&self) -> usize {
        self.buf.len() + self.current.data.len()
    }

    pub(crate) fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref().filter(|id| !id.is_empty())
    }

    pub(crate) fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The next complete event, if the buffered bytes hold one.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.pending_cr && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    let _ = self.buf.split_to(1);
                }
                self.pending_cr = false;
            }
            let Some(at) = self.buf[self.scanned..]
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
            else {
                self.scanned = self.buf.len();
                return None;
            };
            let end = self.scanned + at;
            self.scanned = 0;
            let line = self.buf.split_to(end);
            let terminator = self.buf.split_to(1);
            if terminator[0] == b'\r' {
                if self.buf.first() == Some(&b'\n') {
                    let _ = self.buf.split_to(1);
                } else if self.buf.is_empty() {
                    self.pending_cr = true;
                }
            }
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    return Some(std::mem::take(&mut self.current));
                }
                self.current = Event::default();
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.current.event = Some(value.to_owned()),
                "id" if !value.contains('\0') => {
                    self.current.id = Some(value.to_owned());
                    self.last_id = Some(value.to_owned());
                }
                "retry" => {
                    if let Ok(ms) = value.parse() {
                        self.retry_ms = Some(ms);
                    }
                }
                _ => {}
            }
        }
    }
}

/// One `message` event carrying a JSON-RPC message (which has no newlines
/// when it comes from a JSON serializer; any are split into data lines).
pub(crate) fn message_event(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: message\n");
    for line in json.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let stream =
            b": hi\nevent: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\r\ndata: x\r\r\ndata: y\n\n";
        for split in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            p.push(&stream[..split]);
            while let Some(e) = p.next_event() {
                got.push(e);
            }
            p.push(&stream[split..]);
            while let Some(e) = p.next_event() {
                got.push(e);
            }
            assert_eq!(got.len(), 3, "split at {split}: {got:?}");
            assert_eq!(got[0].data, "{\"a\":\n1}");
            assert_eq!(got[0].id.as_deref(), Some("7"));
            assert_eq!(got[0].event.as_deref(), Some("message"));
            assert_eq!(got[1].data, "x");
            assert_eq!(got[2].data, "y");
        }
    }

    #[test]
    fn message_event_round_trips() {
        let mut p = Parser::default();
        p.push(&message_event(b"{\"x\":1}"));
        assert_eq!(p.next_event().expect("event").data, "{\"x\":1}");
    }
}
