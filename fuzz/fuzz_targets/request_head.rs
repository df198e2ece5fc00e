//! The worker's HTTP/1.1 request head parser (`http::server::head`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpgw_worker::fuzz::request_head(data));
