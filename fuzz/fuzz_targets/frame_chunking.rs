//! `cargo fuzz run frame_chunking`: see `veltix_proto::fuzz::frame_chunking` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::frame_chunking(std::time::Instant::now(), data));
