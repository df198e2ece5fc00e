//! An incremental `text/event-stream` parser, fed whatever byte chunks the HTTP body
//! yields.
//!
//! It follows the WHATWG "event stream interpretation" rules: lines end in `\n`, `\r\n`
//! or `\r` (a `\r\n` split across two chunks is one line end), a leading UTF-8 BOM is
//! dropped, `:` lines are comments, `data:` lines accumulate (joined by `\n`), a blank
//! line dispatches, `id:` sets the last event id (kept across events, ignored when it
//! contains NUL) and `retry:` the reconnection delay. An event without data is not
//! dispatched, but its `id:` still counts, which is how MCP servers send "priming"
//! events for resumption. An event that is still open when the stream ends is dropped.
//!
//! It owns only the byte-level format; what an event's data means is the caller's
//! business ([`crate::bridge`]).

use std::time::Duration;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` type, `message` when none was given.
    pub(crate) event: String,
    /// The data lines joined by `\n` (possibly empty: `data:` with nothing after it).
    pub(crate) data: String,
    /// The last event id at dispatch time, if any was set and not reset.
    pub(crate) id: Option<String>,
}

/// The stream broke the parser's size bound.
#[derive(Debug, thiserror::Error)]
#[error("server-sent event larger than {limit} bytes")]
pub(crate) struct SseTooLarge {
    limit: usize,
}

/// Parser state between chunks.
#[derive(Debug)]
pub(crate) struct SseParser {
    /// Bytes of the line not terminated yet.
    line: Vec<u8>,
    /// The previous byte was `\r`, so a `\n` right after it ends no further line.
    after_cr: bool,
    /// No line has been completed yet (a BOM may start the stream).
    at_start: bool,
    data: String,
    event: String,
    last_event_id: String,
    retry: Option<Duration>,
    /// Bound on one line and on one event's data, checked before growing.
    limit: usize,
}

impl SseParser {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: String::new(),
            event: String::new(),
            last_event_id: String::new(),
            retry: None,
            limit,
        }
    }

    /// Consumes one chunk and appends the events it completes to `out`.
    pub(crate) fn feed(
        &mut self,
        mut chunk: &[u8],
        out: &mut Vec<SseEvent>,
    ) -> Result<(), SseTooLarge> {
        if chunk.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.after_cr) && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        while !chunk.is_empty() {
            let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.push_line_bytes(chunk)?;
                return Ok(());
            };
            self.push_line_bytes(&chunk[..end])?;
            let terminator = chunk[end];
            chunk = &chunk[end + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    // The `\n` of a `\r\n` may come with the next chunk.
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        Ok(())
    }

    /// Prepares for a resumed stream: drops the partial line and event of the broken one,
    /// keeps the last event id and the retry delay.
    pub(crate) fn restart(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.at_start = true;
        self.data.clear();
        self.event.clear();
    }

    /// The id to send as `Last-Event-ID` when reconnecting, if the server set one.
    pub(crate) fn last_event_id(&self) -> Option<&str> {
        (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str())
    }

    /// The reconnection delay the server asked for with `retry:`, if any.
    pub(crate) fn retry(&self) -> Option<Duration> {
        self.retry
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseTooLarge> {
        if self.line.len() + bytes.len() > self.limit {
            return Err(SseTooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        let mut line = line;
        if std::mem::take(&mut self.at_start) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseTooLarge { limit: self.limit });
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => {
                self.last_event_id = String::from_utf8_lossy(value).into_owned();
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits, so only overflow can fail; an absurd value is ignored.
                if let Ok(ms) = String::from_utf8_lossy(value).parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        out.push(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_event_id().map(str::to_owned),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
        let mut parser = SseParser::new(LIMIT);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).expect("within limit");
        }
        (out, parser)
    }

    fn datas(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn one_event_in_one_chunk() {
        let (events, _) = parse_chunks(&[b"event: message\ndata: {\"a\":1}\n\n"]);
        assert_eq!(
            events,
            vec![SseEvent {
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
        let text: &[u8] =
            b"\xEF\xBB\xBF: hello\r\nid: 7\r\nevent: message\r\ndata: one\r\ndata: two\r\n\r\ndata:x\r\r";
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
        let (events, _) = parse_chunks(&[b"event: ping\ndata: 1\n\ndata: 2\n\n"]);
        assert_eq!(events[0].event, "ping");
        assert_eq!(events[1].event, "message");
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
    }

    #[test]
    fn retry_accepts_only_digits() {
        let (_, parser) = parse_chunks(&[b"retry: 1500\n\nretry: 2x\n\n"]);
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
        let mut parser = SseParser::new(8);
        let mut out = Vec::new();
        assert!(parser.feed(b"data: 0123456789", &mut out).is_err());
        let mut parser = SseParser::new(8);
        let mut out = Vec::new();
        let many = b"data: 1234\ndata: 1234\ndata: 1234\n";
        assert!(parser.feed(many, &mut out).is_err());
    }
}
