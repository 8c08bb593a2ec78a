//! libFuzzer on [`fuzz_targets::hf_dir`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::hf_dir(data));
