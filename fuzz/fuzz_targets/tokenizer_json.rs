//! libFuzzer on [`fuzz_targets::tokenizer_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::tokenizer_json(data));
