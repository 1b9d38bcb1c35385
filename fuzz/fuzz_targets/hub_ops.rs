//! `cargo fuzz run hub_ops`: see `veltix_proto::fuzz::hub_ops` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::hub_ops(std::time::Instant::now(), data));
