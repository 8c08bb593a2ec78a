//! The tensors of a Llama model by role, and their names in the Hugging Face and
//! GGUF conventions.

use crate::config::LlamaConfig;
use crate::linear::LinearKind;

/// What a stored tensor is, independent of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// Token embedding, `vocab x hidden`.
    Embedding,
    /// RMSNorm gain before attention in a block, `hidden`.
    AttnNorm(usize),
    /// RMSNorm gain before the MLP in a block, `hidden`.
    MlpNorm(usize),
    /// A linear layer of a block, `out x in`.
    Linear(usize, LinearKind),
    /// Final RMSNorm gain, `hidden`.
    FinalNorm,
    /// Output head, `vocab x hidden` (absent when tied).
    LmHead,
}

/// A naming convention: the name a file format gives each role.
pub type Naming = fn(TensorRole) -> String;

/// Before anything is sized by the block count: when `config` takes more tensors than
/// the `available` ones, its first role that `present` does not hold (a header may claim
/// billions of blocks, and listing their roles or reserving their weights would exhaust
/// memory before the missing tensor were named). `None` when the count fits (a missing
/// tensor is then found as the tensors are taken).
pub(crate) fn missing_before_sizing(
    config: &LlamaConfig,
    available: usize,
    present: impl Fn(TensorRole) -> bool,
) -> Option<TensorRole> {
    if TensorRole::count(config) <= available {
        return None;
    }
    TensorRole::iter(config).find(|&role| !present(role))
}

impl TensorRole {
    /// The number of roles `config` stores, the length of [`TensorRole::all`]
    /// (saturating, so a block count read from a file cannot overflow it).
    pub fn count(config: &LlamaConfig) -> usize {
        let per_block = 2 + LinearKind::ALL.len();
        config
            .num_hidden_layers
            .saturating_mul(per_block)
            .saturating_add(2 + usize::from(!config.tie_word_embeddings))
    }

    /// Every role `config` stores, in a fixed order (the output head only when
    /// untied).
    pub fn all(config: &LlamaConfig) -> Vec<TensorRole> {
        Self::iter(config).collect()
    }

    /// [`TensorRole::all`] one at a time, without listing them first.
    pub fn iter(config: &LlamaConfig) -> impl Iterator<Item = TensorRole> + use<> {
        let blocks = (0..config.num_hidden_layers).flat_map(|b| {
            [TensorRole::AttnNorm(b), TensorRole::MlpNorm(b)]
                .into_iter()
                .chain(LinearKind::ALL.map(|k| TensorRole::Linear(b, k)))
        });
        let head = (!config.tie_word_embeddings).then_some(TensorRole::LmHead);
        std::iter::once(TensorRole::Embedding)
            .chain(blocks)
            .chain([TensorRole::FinalNorm])
            .chain(head)
    }

    /// PyTorch shape of the tensor under `config`.
    pub fn shape(self, config: &LlamaConfig) -> Vec<usize> {
        let (vocab, d) = (config.vocab_size, config.hidden_size);
        match self {
            TensorRole::Embedding | TensorRole::LmHead => vec![vocab, d],
            TensorRole::AttnNorm(_) | TensorRole::MlpNorm(_) | TensorRole::FinalNorm => vec![d],
            TensorRole::Linear(_, kind) => {
                let (out, inp) = kind.shape(config);
                vec![out, inp]
            }
        }
    }

    /// Hugging Face name: `model.layers.{b}.self_attn.q_proj.weight`, ...
    pub fn hf_name(self) -> String {
        match self {
            TensorRole::Embedding => "model.embed_tokens.weight".into(),
            TensorRole::AttnNorm(b) => format!("model.layers.{b}.input_layernorm.weight"),
            TensorRole::MlpNorm(b) => format!("model.layers.{b}.post_attention_layernorm.weight"),
            TensorRole::Linear(b, kind) => kind.hf_name(b),
            TensorRole::FinalNorm => "model.norm.weight".into(),
            TensorRole::LmHead => "lm_head.weight".into(),
        }
    }

    /// GGUF name: `blk.{b}.attn_q.weight`, ...
    pub fn gguf_name(self) -> String {
        match self {
            TensorRole::Embedding => "token_embd.weight".into(),
            TensorRole::AttnNorm(b) => format!("blk.{b}.attn_norm.weight"),
            TensorRole::MlpNorm(b) => format!("blk.{b}.ffn_norm.weight"),
            TensorRole::Linear(b, kind) => kind.gguf_name(b),
            TensorRole::FinalNorm => "output_norm.weight".into(),
            TensorRole::LmHead => "output.weight".into(),
        }
    }
}
