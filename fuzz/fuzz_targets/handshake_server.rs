//! `cargo fuzz run handshake_server`: see `veltix_proto::fuzz::handshake_server` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::handshake_server(std::time::Instant::now(), data));
