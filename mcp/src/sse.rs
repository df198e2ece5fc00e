//! Server-Sent Events: the incremental parser for the event streams mcpgw
//! reads (an upstream's, for the worker; the server's, for the wrapper) and
//! the framing of the `message` events mcpgw writes itself.
//!
//! The parser follows the WHATWG "event stream interpretation" rules: a
//! leading UTF-8 BOM is dropped; lines end in `\n`, `\r\n` or `\r` (a `\r\n`
//! split across two chunks is one line end); `:` lines are comments; `data`
//! lines accumulate, joined with `\n`; a blank line dispatches; `event` sets
//! the type (`message` when none or empty); `id` sets the last event id,
//! which persists across events and is ignored when it contains NUL;
//! `retry` (ASCII digits only) sets the reconnection time. An event without
//! data is not dispatched, but its `id` still counts: that is how MCP
//! servers send "priming" events for resumption. An event still open when
//! the stream ends is never dispatched.
//!
//! Memory: a line arriving in many reads is scanned once ([`Parser`] keeps
//! its scan offset). What it holds for an unfinished event is bounded either
//! by the caller, who checks [`Parser::pending_bytes`] after each
//! [`Parser::push`], or by the parser itself when made with
//! [`Parser::with_limit`] and fed with [`Parser::feed`]. What an event's
//! data means is the caller's business.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event` type, `message` when none (or an empty one) was given.
    pub event: String,
    /// The data lines joined by `\n` (empty for a lone `data:`).
    pub data: String,
    /// The stream's last event id at dispatch, if one was set and not reset.
    pub id: Option<String>,
}

/// A bounded parser met a line or an event larger than its limit; the
/// stream cannot be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
}

/// Feed bytes as they arrive; take complete events out.
#[derive(Debug)]
pub struct Parser {
    buf: BytesMut,
    /// The event being read: its `event` type and data so far.
    event: String,
    data: String,
    has_data: bool,
    /// A `\r` ended the last chunk; a following `\n` belongs to it.
    pending_cr: bool,
    /// Bytes at the front of `buf` already searched for a line end: a long
    /// line arriving in many reads is scanned once, not once per read.
    scanned: usize,
    /// No line of this stream is complete yet: the first may open with a
    /// BOM, which is not part of it.
    at_start: bool,
    /// The stream's last event id (set by any `id` field, also of events
    /// without data such as a priming event): what a resumption sends as
    /// `Last-Event-ID`. Empty when unset or reset.
    last_id: String,
    /// The reconnection time the server asked for (`retry`), in ms.
    retry_ms: Option<u64>,
    /// Largest line, and largest event data, [`Self::next_event`] accepts;
    /// `usize::MAX` when the caller bounds [`Self::pending_bytes`] instead.
    limit: usize,
    /// A line or an event went over `limit`: nothing more is parsed.
    over_limit: bool,
}

impl Default for Parser {
    /// A parser that leaves the bound to its caller.
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl Parser {
    /// A parser that refuses, before holding them, a line or an event's data
    /// over `limit` bytes ([`Self::feed`] reports it). The partial line it
    /// holds between chunks is checked after each chunk, so it holds at most
    /// `limit` plus one chunk.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            pending_cr: false,
            scanned: 0,
            at_start: true,
            last_id: String::new(),
            retry_ms: None,
            limit,
            over_limit: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// [`Self::push`] `chunk` and append the events it completes to `out`;
    /// `Err` once a line or an event is over the parser's limit.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        let too_large = TooLarge { limit: self.limit };
        // A caller that reads on after the verdict must not grow the buffer.
        if self.over_limit {
            return Err(too_large);
        }
        self.push(chunk);
        while let Some(event) = self.next_event() {
            out.push(event);
        }
        // What is left is one unfinished line.
        if self.buf.len() > self.limit {
            self.over_limit = true;
        }
        if self.over_limit {
            Err(too_large)
        } else {
            Ok(())
        }
    }

    /// Bytes held for events not complete yet (bounded by callers of
    /// [`Self::push`], so a server that never ends an event cannot grow it
    /// forever).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len().saturating_add(self.data.len())
    }

    /// The id to send as `Last-Event-ID` when reconnecting, if the server
    /// set one.
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_id.is_empty()).then_some(self.last_id.as_str())
    }

    /// The reconnection time the server asked for with `retry`, in ms.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// [`Self::retry_ms`] as a duration.
    pub fn retry(&self) -> Option<Duration> {
        self.retry_ms.map(Duration::from_millis)
    }

    /// Prepare for a resumed stream: drop the partial line and event of the
    /// broken one (and the verdict on its size), keep the last event id and
    /// the retry time, which are what a resumption carries over.
    pub fn restart(&mut self) {
        self.buf.clear();
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.pending_cr = false;
        self.scanned = 0;
        self.at_start = true;
        self.over_limit = false;
    }

    /// The next complete event, if the buffered bytes hold one.
    pub fn next_event(&mut self) -> Option<Event> {
        while !self.over_limit {
            if self.pending_cr && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    let _ = self.buf.split_to(1);
                }
                self.pending_cr = false;
            }
            let Some(at) = memchr::memchr2(b'\n', b'\r', &self.buf[self.scanned..]) else {
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
                    // The `\n` of a `\r\n` may come with the next chunk.
                    self.pending_cr = true;
                }
            }
            let mut line = &line[..];
            if std::mem::take(&mut self.at_start) {
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            if line.len() > self.limit {
                self.over_limit = true;
                return None;
            }
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                if std::mem::take(&mut self.has_data) {
                    return Some(Event {
                        event: if event.is_empty() {
                            "message".to_owned()
                        } else {
                            event
                        },
                        data: std::mem::take(&mut self.data),
                        id: self.last_event_id().map(str::to_owned),
                    });
                }
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    // Measured as held: an invalid byte becomes U+FFFD,
                    // three bytes, so the raw length would let the data
                    // grow to three times the limit.
                    let value = String::from_utf8_lossy(value);
                    let grown = self
                        .data
                        .len()
                        .saturating_add(value.len())
                        .saturating_add(1);
                    if grown > self.limit {
                        self.over_limit = true;
                        return None;
                    }
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(&value);
                    self.has_data = true;
                }
                b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
                b"id" if !value.contains(&0) => {
                    self.last_id = String::from_utf8_lossy(value).into_owned();
                }
                b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                    // All digits, so only overflow can fail; an absurd value
                    // is ignored.
                    if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse() {
                        self.retry_ms = Some(ms);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// One `message` event carrying a JSON-RPC message (which has no newlines
/// when it comes from a JSON serializer). Line ends are split into data
/// lines the way a reader splits them: `\r\n`, `\n` and a lone `\r` (JSON
/// whitespace an upstream may send; written into one data line, it would
/// end the line there for the reader and cut the message).
pub fn message_event(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: message\n");
    let mut rest = json;
    loop {
        out.extend_from_slice(b"data: ");
        let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
            out.extend_from_slice(rest);
            out.push(b'\n');
            break;
        };
        out.extend_from_slice(&rest[..at]);
        out.push(b'\n');
        let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
        rest = &rest[at + if crlf { 2 } else { 1 }..];
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<Event>, Parser) {
        let mut parser = Parser::with_limit(LIMIT);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).expect("within limit");
        }
        (out, parser)
    }

    fn datas(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

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
            assert_eq!(got[0].event, "message");
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

    #[test]
    fn the_limit_bounds_the_data_as_held_not_as_received() {
        // Found by the `sse` fuzz target: 40 invalid bytes are held as 40
        // U+FFFD (120 bytes), past a limit of 80 that the raw bytes kept.
        let mut line = b"data: ".to_vec();
        line.extend_from_slice(&[0xf7; 40]);
        line.push(b'\n');
        let mut p = Parser::with_limit(80);
        let mut out = Vec::new();
        assert_eq!(p.feed(&line, &mut out), Err(TooLarge { limit: 80 }));
        assert!(p.pending_bytes() <= 80, "{}", p.pending_bytes());
        let mut p = Parser::with_limit(200);
        line.push(b'\n');
        p.feed(&line, &mut out).expect("under the limit");
        assert_eq!(out[0].data, "\u{fffd}".repeat(40));
    }

    #[test]
    fn message_events_split_every_line_end_a_reader_sees() {
        // Found by the `sse` fuzz target: a lone CR (JSON whitespace in an
        // upstream's answer) was written inside one data line, and the
        // reader ended the line there, cutting the message in two.
        let json = b"{\"a\":1,\r\"b\":2,\r\n\"c\":3\n}";
        assert_eq!(
            &message_event(json)[..],
            b"event: message\ndata: {\"a\":1,\ndata: \"b\":2,\ndata: \"c\":3\ndata: }\n\n"
        );
        let mut p = Parser::default();
        p.push(&message_event(json));
        assert_eq!(
            p.next_event().expect("event").data,
            "{\"a\":1,\n\"b\":2,\n\"c\":3\n}"
        );
        assert_eq!(p.next_event(), None);
        assert_eq!(
            &message_event(b"x\n")[..],
            b"event: message\ndata: x\ndata: \n\n"
        );
    }

    #[test]
    fn one_event_in_one_chunk() {
        let (events, _) = parse_chunks(&[b"event: message\ndata: {\"a\":1}\n\n"]);
        assert_eq!(
            events,
            vec![Event {
                event: "message".into(),
                data: "{\"a\":1}".into(),
                id: None
            }]
        );
    }

    #[test]
    fn every_line_ending_style() {
        for text in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\ndata: b\n\r",
        ] {
            let (events, _) = parse_chunks(&[text]);
            assert_eq!(datas(&events), ["a", "b"], "{text:?}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let text: &[u8] = b"\xEF\xBB\xBF: hello\r\nid: 7\r\nevent: message\r\ndata: one\r\ndata: two\r\n\r\ndata:x\r\r";
        let (whole, _) = parse_chunks(&[text]);
        assert_eq!(datas(&whole), ["one\ntwo", "x"]);
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let (split, parser) = parse_chunks(&[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(split, whole, "split at {i}/{j}");
                assert_eq!(parser.last_event_id(), Some("7"));
            }
        }
    }

    #[test]
    fn a_leading_bom_is_dropped_once_per_stream() {
        // Without the strip, the first line would be the unknown field
        // "\u{FEFF}data" and the event would be lost.
        let (events, _) = parse_chunks(&[b"\xEF\xBB", b"\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(datas(&events), ["a"]);
        let (_, mut parser) = parse_chunks(&[b"data: a\n\n"]);
        parser.restart();
        let mut out = Vec::new();
        parser
            .feed(b"\xEF\xBB\xBFdata: b\n\n", &mut out)
            .expect("within limit");
        assert_eq!(datas(&out), ["b"]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let (events, _) = parse_chunks(&[b"data: a\r", b"", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(datas(&events), ["a\nb"]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let (events, _) = parse_chunks(&[b": keepalive\n\nfoo: bar\ndata\ndata: x\n\n"]);
        // `data` without a colon is a data line with an empty value.
        assert_eq!(datas(&events), ["\nx"]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_stripped() {
        let (events, _) = parse_chunks(&[b"data:  two spaces\ndata:none\n\n"]);
        assert_eq!(datas(&events), [" two spaces\nnone"]);
    }

    #[test]
    fn event_type_defaults_to_message_and_resets() {
        let (events, _) =
            parse_chunks(&[b"event: ping\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n"]);
        assert_eq!(events[0].event, "ping");
        assert_eq!(events[1].event, "message");
        assert_eq!(events[2].event, "message");
    }

    #[test]
    fn id_persists_and_counts_without_data() {
        // A priming event: an id and an empty data line; then an id-only block.
        let (events, parser) = parse_chunks(&[b"id: a1\ndata:\n\ndata: x\n\nid: a2\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "");
        assert_eq!(events[0].id.as_deref(), Some("a1"));
        assert_eq!(events[1].id.as_deref(), Some("a1"));
        assert_eq!(parser.last_event_id(), Some("a2"));
    }

    #[test]
    fn id_with_nul_is_ignored_and_empty_id_resets() {
        let (_, parser) = parse_chunks(&[b"id: good\n\nid: b\0d\n\n"]);
        assert_eq!(parser.last_event_id(), Some("good"));
        let (_, parser) = parse_chunks(&[b"id: good\n\nid\n\n"]);
        assert_eq!(parser.last_event_id(), None);
    }

    #[test]
    fn restart_drops_the_partial_event_but_keeps_id_and_retry() {
        let (_, mut parser) = parse_chunks(&[b"retry: 10\nid: 4\ndata: x\n\ndata: partial"]);
        parser.restart();
        let mut out = Vec::new();
        parser.feed(b"data: y\n\n", &mut out).expect("within limit");
        assert_eq!(datas(&out), ["y"]);
        assert_eq!(out[0].id.as_deref(), Some("4"));
        assert_eq!(parser.retry(), Some(Duration::from_millis(10)));
        assert_eq!(parser.retry_ms(), Some(10));
    }

    #[test]
    fn retry_accepts_only_digits() {
        let (_, parser) = parse_chunks(&[b"retry: 1500\n\nretry: 2x\n\nretry: +7\n\n"]);
        assert_eq!(parser.retry(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        let (events, _) = parse_chunks(&[b"data: complete\n\ndata: cut off\n"]);
        assert_eq!(datas(&events), ["complete"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let (events, _) = parse_chunks(&[b"data: a\xFFb\n\n"]);
        assert_eq!(datas(&events), ["a\u{FFFD}b"]);
    }

    #[test]
    fn oversized_lines_and_events_are_refused() {
        let mut out = Vec::new();
        // An unfinished line.
        let mut parser = Parser::with_limit(8);
        assert!(parser.feed(b"data: 0123456789", &mut out).is_err());
        // A finished one, even if it is not data.
        let mut parser = Parser::with_limit(8);
        assert!(parser.feed(b"event: 0123456789\n", &mut out).is_err());
        // An event's data, line by line, before it is dispatched.
        let mut parser = Parser::with_limit(8);
        let many = b"data: 1234\ndata: 1234\ndata: 1234\n\n";
        assert_eq!(parser.feed(many, &mut out), Err(TooLarge { limit: 8 }));
        assert!(out.is_empty());
        // The verdict sticks until a restart.
        assert!(parser.feed(b"data: 1\n\n", &mut out).is_err());
        parser.restart();
        parser.feed(b"data: 1\n\n", &mut out).expect("within limit");
        assert_eq!(datas(&out), ["1"]);
    }

    #[test]
    fn pending_bytes_count_the_unfinished_event() {
        let mut p = Parser::default();
        p.push(b"data: 12345\ndata: 678");
        assert!(p.next_event().is_none());
        // "12345" held as data, "data: 678" as an unfinished line.
        assert_eq!(p.pending_bytes(), 5 + 9);
        p.push(b"\n\n");
        assert_eq!(
            p.next_event().map(|e| e.data).as_deref(),
            Some("12345\n678")
        );
        assert_eq!(p.pending_bytes(), 0);
    }
}
