//! `cargo fuzz run handshake_auth`: see `veltix_proto::fuzz::handshake_auth` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::handshake_auth(std::time::Instant::now(), data));
