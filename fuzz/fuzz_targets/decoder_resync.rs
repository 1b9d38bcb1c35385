//! `cargo fuzz run decoder_resync`: see `veltix_proto::fuzz::decoder_resync` for the input layout and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veltix_proto::fuzz::decoder_resync(std::time::Instant::now(), data));
