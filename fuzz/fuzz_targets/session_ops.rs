//! `cargo fuzz run session_ops`: see `veltix_proto::fuzz::session_ops` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::session_ops(std::time::Instant::now(), data));
