//! The supervisor's peek/route parser, held against the worker's reading of
//! the same head (both must see the same session id); the session-id
//! validator and the routing hash and table.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let routed = mcpgw_supervisor::fuzz::peek(data);
    if let (Some(supervisor), Some(worker)) = (routed, mcpgw_worker::fuzz::request_session(data)) {
        assert_eq!(
            supervisor, worker,
            "the supervisor routes by another session id than the worker reads"
        );
    }
    mcpgw_protocol::fuzz::session_id(data);
    // The header value alone, as the validator gets it.
    if let Some(value) = data.get(..data.len().min(26)) {
        mcpgw_protocol::fuzz::session_id(value);
    }
});
