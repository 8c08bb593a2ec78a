//! Tiny generated models and texts shared by the end-to-end tests (also compiled into
//! `crates/magr-cli/tests` by path).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use magr::llama_io::LinearKind;
use magr::llama_io::tokenizer::tokenizer_from_json;
use magr::llama_io::{HostTensor, LlamaConfig, Model, TensorRole, WeightDtype, write_hf_dir};
use magr::quantizers::QuantizedLinear;
use magr::{OutputFormat, PipelineError, PipelineObserver, PipelineState, RunCheckpoint};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

/// Words of the tiny tokenizer: `w0` .. `w299`, one token each (id = number).
pub const VOCAB: usize = 300;

/// A 2-block model (hidden 64, 4 heads / 2 KV heads, MLP 128, vocab 300) with N(0, 0.05)
/// weights, unit norms, and an embedding whose rows share a few directions, so that
/// the inputs of every linear layer are strongly correlated.
pub fn tiny_model(seed: u64) -> Model {
    model_with_blocks(2, seed)
}

/// [`tiny_model`] with `blocks` decoder blocks.
pub fn model_with_blocks(blocks: usize, seed: u64) -> Model {
    generated_model(64, 128, blocks, 2, seed)
}

/// A model shaped for llama.cpp's K-quants (hidden 256, MLP 512: every input width a
/// multiple of 256), otherwise as [`tiny_model`], with `blocks` decoder blocks.
pub fn k_quant_model(blocks: usize, seed: u64) -> Model {
    generated_model(256, 512, blocks, 2, seed)
}

/// A generated model of these widths with 4 heads and `kv_heads` KV heads, as
/// [`tiny_model`].
pub fn generated_model(
    hidden: usize,
    intermediate: usize,
    blocks: usize,
    kv_heads: usize,
    seed: u64,
) -> Model {
    let config = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: blocks,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        head_dim: hidden / 4,
        vocab_size: VOCAB,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        max_position_embeddings: 256,
        bos_token_id: None,
        eos_token_id: None,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let basis: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..hidden).map(|_| normal.sample(&mut rng)).collect())
        .collect();
    let tensors: HashMap<String, HostTensor> = TensorRole::all(&config)
        .into_iter()
        .map(|role| {
            let shape = role.shape(&config);
            let n: usize = shape.iter().product();
            let data: Vec<f32> = match role {
                TensorRole::Embedding => (0..n)
                    .map(|i| {
                        let (row, col) = (i / hidden, i % hidden);
                        basis[row % 4][col] + 0.1 * normal.sample(&mut rng)
                    })
                    .collect(),
                TensorRole::Linear(..) | TensorRole::LmHead => {
                    (0..n).map(|_| 0.05 * normal.sample(&mut rng)).collect()
                }
                _ => vec![1.0; n],
            };
            (role.hf_name(), HostTensor { shape, data })
        })
        .collect();
    Model::from_hf_tensors(config, tensors, None, Path::new("generated")).unwrap()
}

/// `count` random windows of `len` token ids below [`VOCAB`].
pub fn windows(count: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect()
}

/// A text of `words` random words of the tiny vocabulary, separated by spaces.
pub fn word_text(words: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..words)
        .map(|_| format!("w{}", rng.random_range(0..VOCAB)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes [`tiny_model`] as a Hugging Face directory `dir` (f32 weights) with a
/// word-level `tokenizer.json` (whitespace-split words `w0` .. `w299`, unknown words
/// mapped to `w0`).
pub fn write_tiny_model_dir(dir: &Path, seed: u64) {
    write_tiny_model_dir_with(dir, seed, |_| {});
}

/// [`write_tiny_model_dir`] with the tensors (by Hugging Face name) changed by `edit`
/// before they are written.
pub fn write_tiny_model_dir_with(
    dir: &Path,
    seed: u64,
    edit: impl FnOnce(&mut HashMap<String, HostTensor>),
) {
    write_model_dir_with(dir, tiny_model(seed), edit);
}

/// Writes [`model_with_blocks`] as [`write_tiny_model_dir`] does.
pub fn write_model_dir(dir: &Path, blocks: usize, seed: u64) {
    write_model_dir_with(dir, model_with_blocks(blocks, seed), |_| {});
}

/// Writes [`k_quant_model`] as [`write_tiny_model_dir`] does.
pub fn write_k_quant_model_dir(dir: &Path, blocks: usize, seed: u64) {
    write_model_dir_with(dir, k_quant_model(blocks, seed), |_| {});
}

/// Writes `model` (a generated one, on the tiny vocabulary) with the word-level
/// tokenizer, its tensors changed by `edit` first.
fn write_model_dir_with(
    dir: &Path,
    model: Model,
    edit: impl FnOnce(&mut HashMap<String, HostTensor>),
) {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| (format!("w{i}"), serde_json::Value::from(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    let scratch = dir.with_extension("tokenizer.json");
    std::fs::write(&scratch, tokenizer.to_string()).unwrap();
    let tokenizer = tokenizer_from_json(&scratch).unwrap();
    std::fs::remove_file(&scratch).unwrap();
    let mut tensors = HashMap::new();
    for (name, shape, data) in model.hf_tensors().unwrap() {
        tensors.insert(
            name,
            HostTensor {
                shape,
                data: data.to_vec(),
            },
        );
    }
    edit(&mut tensors);
    let model =
        Model::from_hf_tensors(model.config().clone(), tensors, Some(tokenizer), dir).unwrap();
    write_hf_dir(&model, dir, WeightDtype::F32, false).unwrap();
}

/// Every file under `dir` with its bytes, by relative path.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// A byte-level BPE `tokenizer.json`: the 256 byte symbols of GPT-2 and two merges.
pub fn bpe_tokenizer_json() -> String {
    // GPT-2's byte-to-symbol map: printable bytes stand for themselves, the others
    // for the code points from 256 on, in order.
    let mut symbols = Vec::new();
    let mut shifted = 0;
    for b in 0..=255u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        symbols.push(if printable {
            char::from_u32(b).unwrap()
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap()
        });
    }
    let mut vocab: Vec<String> = symbols.iter().map(char::to_string).collect();
    vocab.extend(["he".into(), "ll".into()]);
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i.into()))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": ["h e", "l l"]}
    })
    .to_string()
}

/// Feeds one output format the layers of a run; with a checkpoint, saves every finished
/// block with the format's state; with `fail_after`, fails after that block (a simulated
/// kill).
pub struct Feed<'a> {
    /// The format fed.
    pub format: &'a mut dyn OutputFormat,
    /// Where finished blocks are saved, if anywhere.
    pub checkpoint: Option<&'a RunCheckpoint>,
    /// The block after which the run fails, if any.
    pub fail_after: Option<usize>,
    /// Only blocks before this one are checkpointed, if given (a kill before the
    /// checkpoint of a later block).
    pub save_until: Option<usize>,
}

impl<'a> Feed<'a> {
    /// Feeds `format` only.
    pub fn new(format: &'a mut dyn OutputFormat) -> Self {
        Feed {
            format,
            checkpoint: None,
            fail_after: None,
            save_until: None,
        }
    }
}

impl PipelineObserver for Feed<'_> {
    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        q: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        self.format.layer_quantized(block, kind, q)
    }

    fn block_finished(
        &mut self,
        model: &mut Model,
        state: &PipelineState,
    ) -> Result<(), PipelineError> {
        let saved = self
            .save_until
            .is_none_or(|until| state.next_block <= until);
        if let Some(checkpoint) = self.checkpoint.filter(|_| saved) {
            checkpoint.save(model, state, &mut [&mut *self.format])?;
        }
        if self.fail_after == Some(state.next_block - 1) {
            return Err(PipelineError::Output("simulated kill".into()));
        }
        Ok(())
    }
}
