//! The fuzz targets of magr's readers. Each takes arbitrary bytes, lays them out as the
//! file or files its reader opens, and reads them: any outcome but a panic, an abort or a
//! hang passes (an error naming the file is the expected answer to almost every input).
//!
//! An input for a reader of several files holds their bytes joined by [`SEPARATOR`]
//! ([`join`]); a missing part is a missing file. The same functions run under libFuzzer
//! (`fuzz/`, `cargo xtask fuzz TARGET`) and, for a fixed number of inputs made by
//! [`mutate`] from seed files, in this crate's tests.
#![warn(missing_docs)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use magr::llama_io::tokenizer::tokenizer_from_json;
use magr::llama_io::{self, GgufFloat, HostTensor, LlamaConfig, Model, TensorRole, WeightDtype};
use magr::quantizers::GridSpec;
use magr::{FormatContext, OutputFormat, RunCheckpoint};

/// A fuzz target: reads its input, whatever the bytes.
pub type Target = fn(&[u8]);

/// The targets, by name.
pub const TARGETS: [(&str, Target); 4] = [
    ("gguf", gguf),
    ("hf_dir", hf_dir),
    ("tokenizer_json", tokenizer_json),
    ("checkpoint", checkpoint),
];

/// What separates the files of one input.
pub const SEPARATOR: &[u8] = b"\n--magr-fuzz-file--\n";

/// The files of a [`hf_dir`] input, in order.
pub const HF_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The files of a [`checkpoint`] input, in order.
pub const CHECKPOINT_FILES: [&str; 3] = [
    "state.json",
    "block-0000.safetensors",
    "hidden-0001/batch-0000.safetensors",
];

/// The fingerprint of the run whose checkpoints [`checkpoint`] reads.
pub const CHECKPOINT_FINGERPRINT: &str = "fuzz";

/// One input from the bytes of several files.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(SEPARATOR)
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

thread_local! {
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// A directory of this thread's own, emptied for each input.
fn scratch() -> PathBuf {
    SCRATCH.with(|s| {
        let dir = s
            .borrow_mut()
            .get_or_insert_with(|| {
                std::env::temp_dir().join(format!(
                    "magr-fuzz-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ))
            })
            .clone();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Writes the parts of `data` as the files `names` of `dir` (extra parts are dropped,
/// missing ones are missing files).
fn lay_out(dir: &Path, data: &[u8], names: &[&str]) {
    for (name, bytes) in names.iter().zip(split(data)) {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a scratch directory");
        }
        std::fs::write(path, bytes).expect("a scratch file");
    }
}

/// A GGUF file: [`Model::load`] (header, metadata, tensors, tokenizer from metadata)
/// and [`llama_io::inspect`].
pub fn gguf(data: &[u8]) {
    let path = scratch().join("model.gguf");
    std::fs::write(&path, data).expect("a scratch file");
    let _ = Model::load(&path);
    let _ = llama_io::inspect(&path);
}

/// A Hugging Face directory of the files [`HF_FILES`]: [`Model::load`] and
/// [`llama_io::inspect`].
pub fn hf_dir(data: &[u8]) {
    let dir = scratch();
    lay_out(&dir, data, &HF_FILES);
    let _ = Model::load(&dir);
    let _ = llama_io::inspect(&dir);
}

/// A `tokenizer.json`: built, then asked to encode and decode a text.
pub fn tokenizer_json(data: &[u8]) {
    let path = scratch().join("tokenizer.json");
    std::fs::write(&path, data).expect("a scratch file");
    if let Ok(tokenizer) = tokenizer_from_json(&path)
        && let Ok(encoding) = tokenizer.encode("Hello, world! 123 = x", true)
    {
        let _ = tokenizer.decode(encoding.get_ids(), false);
    }
}

/// The model a [`checkpoint`] is loaded into: 2 blocks, hidden 64, 4 heads / 2 KV heads
/// of 16, MLP 128, vocabulary 300, zero weights.
pub fn checkpoint_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 300,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        max_position_embeddings: 256,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// The formats whose state a [`checkpoint`] restores: fake-quant and GPTQ, 4 bits in
/// groups of 32.
pub fn checkpoint_formats() -> Vec<Box<dyn OutputFormat>> {
    let context = FormatContext {
        spec: GridSpec::reference(4, Some(32)).expect("a valid grid"),
        gguf_preset: None,
        act_order: false,
        damping: Some(0.01),
        dtype: WeightDtype::F16,
        gguf_float: GgufFloat::AsSource,
    };
    ["fake-quant", "gptq"]
        .map(|name| magr::output_format(name, &context).expect("a registered format"))
        .into()
}

/// A run checkpoint of the files [`CHECKPOINT_FILES`], loaded into the model of
/// [`checkpoint_config`] with the formats of [`checkpoint_formats`].
pub fn checkpoint(data: &[u8]) {
    let dir = scratch();
    lay_out(&dir, data, &CHECKPOINT_FILES);
    let config = checkpoint_config();
    let tensors: HashMap<String, HostTensor> = TensorRole::all(&config)
        .into_iter()
        .map(|role| {
            let shape = role.shape(&config);
            let data = vec![0.0; shape.iter().product()];
            (role.hf_name(), HostTensor { shape, data })
        })
        .collect();
    let mut model = Model::from_hf_tensors(config, tensors, None, &dir).expect("a valid model");
    let mut formats = checkpoint_formats();
    let mut formats: Vec<&mut dyn OutputFormat> =
        formats.iter_mut().map(|f| f.as_mut() as _).collect();
    let _ = RunCheckpoint::new(&dir, CHECKPOINT_FINGERPRINT.into()).load(&mut model, &mut formats);
}

/// Values that break parsers where a length, count or offset is read.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff_ffff,
    0x8000_0000,
    1 << 32,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// `data` changed by 1 to 4 random edits (bit flips, random or interesting bytes and
/// 8-byte words, cuts, repeated or deleted spans), from the xorshift state `rng`.
pub fn mutate(data: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let mut out = data.to_vec();
    for _ in 0..1 + next() % 4 {
        if out.is_empty() {
            out.push(next() as u8);
            continue;
        }
        let at = (next() % out.len() as u64) as usize;
        match next() % 7 {
            0 => out[at] ^= 1 << (next() % 8),
            1 => out[at] = next() as u8,
            2 => {
                let word = INTERESTING[(next() % INTERESTING.len() as u64) as usize].to_le_bytes();
                let end = (at + 8).min(out.len());
                out[at..end].copy_from_slice(&word[..end - at]);
            }
            3 => out.truncate(at),
            4 => {
                let end = (at + 1 + (next() % 64) as usize).min(out.len());
                let span = out[at..end].to_vec();
                out.splice(at..at, span);
            }
            5 => {
                let end = (at + 1 + (next() % 64) as usize).min(out.len());
                out.drain(at..end);
            }
            _ => out[at] = out[at].wrapping_add(1),
        }
    }
    out
}
