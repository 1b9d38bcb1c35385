//! `cargo fuzz run retry_policy`: see `veltix_proto::fuzz::retry_policy` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::retry_policy(std::time::Instant::now(), data));
