//! libFuzzer on [`fuzz_targets::checkpoint`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::checkpoint(data));
