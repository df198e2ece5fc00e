//! Entry point of the peek fuzz target in `fuzz/` (the `fuzzing` feature;
//! the gateway's own build never has this module). Not an API: hidden, and
//! free to change.

use mcpgw_protocol::session_id::SessionId;

use crate::peek::{Head, Parsed, parse};

/// The supervisor's peek parser on `data` as the peeked bytes: the session
/// id it routes by for a complete head (`Some(None)`: none, or a malformed
/// one), `None` for anything else. A complete head is one httparse calls
/// complete, and the verdict never changes as more bytes arrive after it.
pub fn peek(data: &[u8]) -> Option<Option<SessionId>> {
    let parsed = parse(data);
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let complete = httparse::Request::new(&mut headers).parse(data);
    match parsed {
        Parsed::Done(Head::Complete { session }) => {
            let Ok(httparse::Status::Complete(len)) = complete else {
                panic!("complete for the supervisor, not for httparse: {complete:?}");
            };
            // What follows the head (a body, a pipelined request) does not
            // change the routing.
            let Parsed::Done(Head::Complete { session: alone }) = parse(&data[..len]) else {
                panic!("the head alone is not complete");
            };
            assert_eq!(alone, session);
            Some(session)
        }
        Parsed::Done(Head::Closed) => panic!("a parse cannot see a close"),
        Parsed::Done(Head::TooLarge | Head::Malformed) => {
            assert!(complete.is_err(), "refused a head httparse takes");
            None
        }
        Parsed::Partial => {
            assert!(matches!(complete, Ok(httparse::Status::Partial)));
            None
        }
    }
}
