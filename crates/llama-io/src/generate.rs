//! [`write_random_model`]: a Llama model of any shape with random weights, written as a
//! Hugging Face directory (f16 safetensors, one shard per block plus one for the
//! embedding, final norm and head, the shard index, `config.json` and a byte-level
//! tokenizer), for measurements at real sizes (a 7B-shaped model) where no real
//! checkpoint can be fetched. The model is never in memory: each tensor's values are
//! drawn when the writer asks for them, one tensor at a time, and the same seed gives
//! the same bytes on any machine and thread count.
//!
//! Uses `error`, `config`, `names`, `hf`.

use std::borrow::Cow;
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StudentT};
use rayon::prelude::*;
use safetensors::{Dtype, View};
use serde_json::Value;
use tokenizers::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::names::TensorRole;

/// Standard deviation of the embedding, head and linear weights: Llama's initialisation
/// scale, which is also the order of a trained 7B model's weights.
pub const WEIGHT_STD: f32 = 0.02;

/// Degrees of freedom of the Student-t law of the weights: heavy tails, so that each
/// output channel has a few large weights, as trained models do (the weights MagR
/// shrinks).
pub const TAIL_DEGREES: f64 = 4.0;

/// Values drawn per random stream; streams are seeded by (seed, tensor, chunk), so
/// the values do not depend on how the work is split over threads.
const CHUNK: usize = 1 << 16;

/// The named shapes [`shape`] knows, with a line of help each.
pub const SHAPES: [(&str, &str); 3] = [
    (
        "llama-7b",
        "LLaMA-2-7B: hidden 4096, MLP 11008, 32 heads (32 KV), vocab 32000, 32 blocks",
    ),
    (
        "llama-70b",
        "LLaMA-2-70B: hidden 8192, MLP 28672, 64 heads (8 KV), vocab 32000, 80 blocks",
    ),
    (
        "tiny",
        "hidden 64, MLP 160, 4 heads (2 KV), vocab 300, 2 blocks (tests)",
    ),
];

/// The configuration of the named shape (see [`SHAPES`]), `None` for another name.
pub fn shape(name: &str) -> Option<LlamaConfig> {
    let (hidden, mlp, heads, kv, vocab, blocks) = match name {
        "llama-7b" => (4096, 11008, 32, 32, 32000, 32),
        "llama-70b" => (8192, 28672, 64, 8, 32000, 80),
        "tiny" => (64, 160, 4, 2, 300, 2),
        _ => return None,
    };
    Some(LlamaConfig {
        hidden_size: hidden,
        intermediate_size: mlp,
        num_hidden_layers: blocks,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        vocab_size: vocab,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
        max_position_embeddings: 4096,
        bos_token_id: Some(BOS),
        eos_token_id: Some(EOS),
    })
}

/// Ids of the tokenizer's special tokens, after the 256 byte tokens.
const BOS: u32 = 256;
const EOS: u32 = 257;

/// How one tensor's values are made.
#[derive(Clone, Copy)]
enum Fill {
    /// Every value 1 (the RMSNorm gains).
    Ones,
    /// Student-t with [`TAIL_DEGREES`], scaled to standard deviation [`WEIGHT_STD`],
    /// from the streams of `seed`.
    Random { seed: u64 },
}

/// One tensor of the generated model, as the safetensors writer sees it (f16).
struct RandomTensor {
    shape: Vec<usize>,
    fill: Fill,
}

impl RandomTensor {
    fn values(&self) -> Vec<u8> {
        let n: usize = self.shape.iter().product();
        let mut bytes = vec![0u8; 2 * n];
        match self.fill {
            Fill::Ones => {
                let one = half::f16::ONE.to_le_bytes();
                bytes
                    .chunks_exact_mut(2)
                    .for_each(|b| b.copy_from_slice(&one));
            }
            Fill::Random { seed } => {
                let law = StudentT::new(TAIL_DEGREES).expect("positive degrees of freedom");
                let scale = f64::from(WEIGHT_STD) / (TAIL_DEGREES / (TAIL_DEGREES - 2.0)).sqrt();
                bytes
                    .par_chunks_mut(2 * CHUNK)
                    .enumerate()
                    .for_each(|(chunk, out)| {
                        let mut rng = StdRng::seed_from_u64(
                            seed ^ (chunk as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        );
                        for b in out.chunks_exact_mut(2) {
                            let x = half::f16::from_f64(law.sample(&mut rng) * scale);
                            b.copy_from_slice(&x.to_le_bytes());
                        }
                    });
            }
        }
        bytes
    }
}

impl View for &RandomTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F16
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.values())
    }

    fn data_len(&self) -> usize {
        2 * self.shape.iter().product::<usize>()
    }
}

/// A byte-level BPE tokenizer with no merges: one token per byte (ids 0-255), then
/// `<s>` and `</s>`. Any text encodes, into ids below 258.
pub fn byte_tokenizer() -> Result<Tokenizer> {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: Vocab = alphabet
        .iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .map_err(|e| LlamaIoError::Tokenizer(format!("building the byte tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let special = |s: &str| tokenizers::AddedToken::from(s.to_string(), true);
    tokenizer
        .add_special_tokens([special("<s>"), special("</s>")])
        .map_err(|e| LlamaIoError::Tokenizer(format!("adding <s> and </s>: {e}")))?;
    Ok(tokenizer)
}

/// Writes a model of shape `config` with random f16 weights (see the module docs) as
/// the Hugging Face directory `dir`, built beside it and renamed when complete; an
/// existing `dir` is replaced only with `overwrite`. `progress(done, total)` is called
/// after each shard.
///
/// # Errors
/// An invalid `config`, a vocabulary smaller than the tokenizer's 258 tokens, an
/// existing `dir` without `overwrite`, a failed write (naming the file).
pub fn write_random_model(
    config: &LlamaConfig,
    dir: &Path,
    seed: u64,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    config.validate(dir)?;
    if config.vocab_size < EOS as usize + 1 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "vocab_size {} is below the generated tokenizer's {} tokens",
            config.vocab_size,
            EOS + 1
        )));
    }
    let tokenizer = byte_tokenizer()?;
    // Shard 0: embedding, final norm, head; shard b + 1: block b.
    let mut plan: Vec<(String, RandomTensor, usize)> = Vec::new();
    for (index, role) in TensorRole::all(config).into_iter().enumerate() {
        let shard = match role {
            TensorRole::AttnNorm(b) | TensorRole::MlpNorm(b) | TensorRole::Linear(b, _) => b + 1,
            TensorRole::Embedding | TensorRole::FinalNorm | TensorRole::LmHead => 0,
        };
        let fill = match role {
            TensorRole::AttnNorm(_) | TensorRole::MlpNorm(_) | TensorRole::FinalNorm => Fill::Ones,
            _ => Fill::Random {
                seed: seed.wrapping_mul(0x0100_0000_01b3) ^ ((index as u64 + 1) << 40),
            },
        };
        let tensor = RandomTensor {
            shape: role.shape(config),
            fill,
        };
        plan.push((role.hf_name(), tensor, shard));
    }

    atomic_fs::write_dir(dir, overwrite, |temp| -> Result<()> {
        let write_json = |name: &str, value: &Value| {
            let path = temp.join(name);
            std::fs::write(&path, value.to_string())
                .map_err(|source| LlamaIoError::Io { path, source })
        };
        write_json("config.json", &config.to_hf_json("float16"))?;
        let tokenizer_path = temp.join("tokenizer.json");
        tokenizer
            .save(&tokenizer_path, false)
            .map_err(|e| LlamaIoError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        // A shard per group: one per block.
        let views = (plan.iter()).map(|(name, t, shard)| (name.clone(), t, *shard));
        crate::hf::write_weights(temp, views.collect(), 0, progress)
    })
}
