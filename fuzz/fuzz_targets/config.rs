//! The config loader (`mcpgw_protocol::config::Config::parse`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mcpgw_protocol::fuzz::config(data));
