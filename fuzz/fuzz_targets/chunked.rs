//! The chunked decoder the worker's server and upstream client share
//! (`http::wire::Chunked`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpgw_worker::fuzz::chunked(data));
