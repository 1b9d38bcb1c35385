//! `cargo fuzz run frame_roundtrip`: see `veltix_proto::fuzz::frame_roundtrip` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::frame_roundtrip(std::time::Instant::now(), data));
