//! Parsing `text/event-stream` bodies into events, per the WHATWG event-stream rules
//! that MCP clients follow (so a gateway that frames events wrongly fails here too).

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` means the default type `message`.
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Parses a complete stream. Comments are skipped; an event not terminated by a blank
/// line is discarded, as a browser or SDK client would.
pub fn parse(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut event = None;
    let mut id = None;
    let mut data: Option<String> = None;
    for line in lines(text) {
        if line.is_empty() {
            if let Some(mut d) = data.take() {
                if d.ends_with('\n') {
                    d.pop();
                }
                events.push(Event {
                    event: event.take(),
                    data: d,
                    id: id.clone(),
                });
            }
            event = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => {
                let d = data.get_or_insert_with(String::new);
                d.push_str(value);
                d.push('\n');
            }
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    events
}

/// Splits on CRLF, LF or CR, keeping a trailing partial line out (it was never ended).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let end = rest.find(['\r', '\n'])?;
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_comments_and_line_endings() {
        let text = ": comment\r\nevent: message\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\nid: 7\rdata: z\r\r";
        let events = parse(text);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].event.as_deref(), Some("message"));
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].data, "x\ny");
        assert_eq!(events[1].event, None);
        assert_eq!(events[2].id.as_deref(), Some("7"));
        assert_eq!(events[2].data, "z");
    }

    #[test]
    fn drops_an_unterminated_event() {
        assert!(parse("data: half").is_empty());
        assert!(parse("data: half\n").is_empty());
    }
}
