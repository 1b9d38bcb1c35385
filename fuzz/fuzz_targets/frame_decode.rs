//! `cargo fuzz run frame_decode`: see `veltix_proto::fuzz::frame_decode` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::frame_decode(std::time::Instant::now(), data));
