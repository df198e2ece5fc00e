//! The Server-Sent Events parser in both of the ways mcpgw runs it: the
//! worker's (unbounded `push` and `next_event`, the caller bounding
//! `pending_bytes`) and the wrapper's (`with_limit` and `feed`); and the
//! `message` events mcpgw writes, read back by the same parser.
#![no_main]

use mcpgw_mcp::sse::{Event, Parser, message_event};

/// The events of `stream` fed in reads of `piece` bytes, the worker's way.
fn pushed(stream: &[u8], piece: usize) -> (Vec<Event>, Parser) {
    let mut parser = Parser::default();
    let mut events = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        parser.push(chunk);
        while let Some(event) = parser.next_event() {
            events.push(event);
        }
        // An invalid byte is held as U+FFFD, three bytes.
        assert!(parser.pending_bytes() <= stream.len() * 3 + 1);
    }
    (events, parser)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control & 0x3f) + 1;
    let limit = usize::from(control >> 6) * 64 + 16;
    let (whole, whole_parser) = pushed(stream, usize::MAX);
    let (pieces, pieces_parser) = pushed(stream, piece);
    assert_eq!(whole, pieces, "read boundaries changed the events");
    assert_eq!(whole_parser.last_event_id(), pieces_parser.last_event_id());
    assert_eq!(whole_parser.retry_ms(), pieces_parser.retry_ms());
    for event in &whole {
        assert!(!event.event.is_empty());
        assert!(event.data.len() <= stream.len() * 3);
    }
    // The wrapper's bounded parser: the same events until it refuses, and
    // it refuses only past its limit.
    let mut bounded = Parser::with_limit(limit);
    let mut fed = Vec::new();
    let mut refused = false;
    for chunk in stream.chunks(piece) {
        if bounded.feed(chunk, &mut fed).is_err() {
            refused = true;
            break;
        }
        assert!(bounded.pending_bytes() <= limit + piece + limit);
    }
    assert!(fed.len() <= whole.len() && fed[..] == whole[..fed.len()]);
    if !refused {
        assert_eq!(
            fed, whole,
            "a bounded parser that never refused lost events"
        );
    } else {
        // Held bytes: an invalid byte is held as three.
        assert!(
            stream.len() * 3 > limit,
            "refused a stream shorter than the limit"
        );
    }
    // What mcpgw writes reads back as one `message` event with the same
    // data, line ends aside.
    let mut back = Parser::default();
    back.push(&message_event(stream));
    let event = back.next_event().expect("a message event");
    assert_eq!(event.event, "message");
    let expected = String::from_utf8_lossy(stream)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    assert_eq!(event.data, expected, "a written event read back changed");
    assert_eq!(back.next_event(), None);
});
