//! The worker's upstream answer reader (`http::client`): head, 1xx heads,
//! body framing, connection reuse.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpgw_worker::fuzz::upstream_answer(data));
