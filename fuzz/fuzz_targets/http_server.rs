//! The worker's HTTP/1.1 server on a whole connection from memory: heads,
//! bodies (length, chunked, too large), pipelining, refusals.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpgw_worker::fuzz::http_server(data));
