//! `cargo fuzz run handshake_client`: see `veltix_proto::fuzz::handshake_client` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::handshake_client(std::time::Instant::now(), data));
