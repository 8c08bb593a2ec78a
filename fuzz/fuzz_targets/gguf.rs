//! libFuzzer on [`fuzz_targets::gguf`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::gguf(data));
