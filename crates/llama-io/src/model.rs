//! [`Model`]: the f32 weights of a Llama model in the Hugging Face layout, its
//! configuration and (optionally) its tokenizer.
//!
//! Every weight lives in its own contiguous `Vec<f32>`; a linear layer's buffer is the
//! PyTorch weight `(out x in)` row-major, which is the paper's `W` (`in x out`)
//! column-major, so a caller can view it as a matrix without a copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use tokenizers::Tokenizer;

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::linear::LinearKind;
use crate::names::{Naming, TensorRole, missing_before_sizing};
use crate::tokenizer::TokenizerSource;

/// A dense f32 tensor on the host: shape (outermost first) and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

/// The weights of one decoder block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockWeights {
    /// RMSNorm gain before attention (`input_layernorm`), `hidden` values.
    pub(crate) attn_norm: Vec<f32>,
    /// RMSNorm gain before the MLP (`post_attention_layernorm`), `hidden` values.
    pub(crate) mlp_norm: Vec<f32>,
    /// The seven linear weights, indexed by [`LinearKind::index`], `(out x in)` row-major.
    pub(crate) linears: [Vec<f32>; 7],
}

/// A Llama model held in f32 on the host, in the Hugging Face layout (RoPE
/// `rotate_half`, PyTorch `(out x in)` weights), whatever file it came from.
#[derive(Clone)]
pub struct Model {
    pub(crate) config: LlamaConfig,
    /// Token embedding, `vocab x hidden` row-major.
    pub(crate) embedding: Vec<f32>,
    pub(crate) blocks: Vec<BlockWeights>,
    /// Final RMSNorm gain, `hidden` values.
    pub(crate) final_norm: Vec<f32>,
    /// Output head `vocab x hidden`; `None` when tied to the embedding.
    pub(crate) lm_head: Option<Vec<f32>>,
    pub(crate) tokenizer: Option<Tokenizer>,
    /// Where the tokenizer came from, as the GGUF writer needs it.
    pub(crate) tokenizer_source: Option<TokenizerSource>,
    /// Storage type of each tensor in the file it was read from, by Hugging Face name.
    pub(crate) source_dtypes: HashMap<String, GgmlDType>,
    /// The file or directory [`Model::load`] read it from (`None` when built in memory).
    pub(crate) source: Option<PathBuf>,
    pub(crate) device: Device,
}

impl Model {
    /// Builds a model from tensors named as in a Hugging Face checkpoint
    /// (`model.layers.{i}.self_attn.q_proj.weight`, ...). Every tensor the config
    /// needs must be present with its exact shape and finite values; an unknown name
    /// (a bias, an expert, ...) is an error. `lm_head.weight` is ignored when the
    /// embedding is tied. `source` names the origin in errors.
    pub fn from_hf_tensors(
        config: LlamaConfig,
        mut tensors: HashMap<String, HostTensor>,
        tokenizer: Option<Tokenizer>,
        source: &Path,
    ) -> Result<Self> {
        if config.tie_word_embeddings {
            tensors.remove(&TensorRole::LmHead.hf_name());
        }
        // A buffer that older checkpoints carry and that the forward pass recomputes.
        tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
        Self::from_named_tensors(config, tensors, tokenizer, source, TensorRole::hf_name)
    }

    /// Builds a model from `tensors` named by `naming`: each role of
    /// [`TensorRole::all`] must be present with its shape and finite values, and no
    /// other tensor may be left over. Errors use the file's own names.
    pub(crate) fn from_named_tensors(
        config: LlamaConfig,
        mut tensors: HashMap<String, HostTensor>,
        tokenizer: Option<Tokenizer>,
        source: &Path,
        naming: Naming,
    ) -> Result<Self> {
        config.validate(source)?;
        let present = |role: TensorRole| tensors.contains_key(&naming(role));
        if let Some(role) = missing_before_sizing(&config, tensors.len(), present) {
            return Err(LlamaIoError::MissingTensor {
                path: source.to_path_buf(),
                tensor: naming(role),
            });
        }
        let mut take = |role: TensorRole| -> Result<Vec<f32>> {
            let name = naming(role);
            let tensor = tensors
                .remove(&name)
                .ok_or_else(|| LlamaIoError::MissingTensor {
                    path: source.to_path_buf(),
                    tensor: name.clone(),
                })?;
            check_tensor(&name, &role.shape(&config), &tensor, source)?;
            Ok(tensor.data)
        };
        let embedding = take(TensorRole::Embedding)?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for b in 0..config.num_hidden_layers {
            let attn_norm = take(TensorRole::AttnNorm(b))?;
            let mlp_norm = take(TensorRole::MlpNorm(b))?;
            let mut linears: [Vec<f32>; 7] = Default::default();
            for kind in LinearKind::ALL {
                linears[kind.index()] = take(TensorRole::Linear(b, kind))?;
            }
            blocks.push(BlockWeights {
                attn_norm,
                mlp_norm,
                linears,
            });
        }
        let final_norm = take(TensorRole::FinalNorm)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take(TensorRole::LmHead)?)
        };
        if let Some(name) = tensors.keys().min() {
            return Err(unexpected_tensor(name, source));
        }
        Ok(Model {
            config,
            embedding,
            blocks,
            final_norm,
            lm_head,
            tokenizer,
            tokenizer_source: None,
            source_dtypes: HashMap::new(),
            source: None,
            device: Device::Cpu,
        })
    }

    /// The architecture hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer, or an error naming the model's file or directory when it has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            LlamaIoError::Tokenizer(match &self.source {
                Some(path) if path.is_dir() => format!(
                    "the model directory {} has no tokenizer.json (copy the tokenizer files \
                     of the original model into it)",
                    path.display()
                ),
                Some(path) => format!(
                    "the model file {} has no tokenizer (no `tokenizer.ggml.*` metadata)",
                    path.display()
                ),
                None => "this model has no tokenizer".into(),
            })
        })
    }

    /// Token ids of `text` as the tokenizer produces them with its special tokens
    /// (as `tokenizer(text)` in `transformers`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer()?
            .encode(text, true)
            .map_err(|e| LlamaIoError::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Replaces (or removes) the tokenizer. The [`TokenizerSource`] of the former one
    /// is dropped: a GGUF written afterwards describes the new tokenizer from its own
    /// JSON.
    pub fn set_tokenizer(&mut self, tokenizer: Option<Tokenizer>) {
        self.tokenizer = tokenizer;
        self.tokenizer_source = None;
    }

    /// Where the tokenizer came from: the `tokenizer.*` metadata of a GGUF input, or
    /// the `tokenizer.json` (and `tokenizer_config.json`) of a Hugging Face input;
    /// `None` for a model built in memory or after [`Model::set_tokenizer`].
    pub fn tokenizer_source(&self) -> Option<&TokenizerSource> {
        self.tokenizer_source.as_ref()
    }

    /// The storage type the tensor playing `role` had in the file this model was read
    /// from (`F32`, `F16`, `BF16` for safetensors; any GGML type for GGUF); `None`
    /// for a model built in memory. Changing a weight does not change it.
    pub fn source_dtype(&self, role: TensorRole) -> Option<GgmlDType> {
        self.source_dtypes.get(&role.hf_name()).copied()
    }

    /// The device the forward pass runs on (the CPU unless changed).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the forward pass on `device` from now on (weights stay on the host and
    /// are copied per block).
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
    }

    /// Number of decoder blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn block(&self, block: usize) -> Result<&BlockWeights> {
        self.blocks.get(block).ok_or_else(|| {
            LlamaIoError::InvalidArgument(format!(
                "block {block} out of range (the model has {} blocks)",
                self.blocks.len()
            ))
        })
    }

    /// PyTorch shape `(out, in)` of a linear layer (the same in every block).
    pub fn linear_shape(&self, kind: LinearKind) -> (usize, usize) {
        kind.shape(&self.config)
    }

    /// The weight of linear layer `kind` of block `block`: `(out x in)` row-major,
    /// i.e. `W` (`in x out`) column-major.
    pub fn linear_weight(&self, block: usize, kind: LinearKind) -> Result<&[f32]> {
        self.tensor(TensorRole::Linear(block, kind))
    }

    /// Replaces the weight of linear layer `kind` of block `block` with `data`
    /// (`(out x in)` row-major); the length must match and every value be finite,
    /// otherwise nothing changes.
    pub fn set_linear_weight(
        &mut self,
        block: usize,
        kind: LinearKind,
        data: &[f32],
    ) -> Result<()> {
        let (out, inp) = self.linear_shape(kind);
        self.block(block)?;
        let name = kind.hf_name(block);
        if data.len() != out * inp {
            return Err(LlamaIoError::InvalidArgument(format!(
                "new weight for `{name}` has {} values, expected {out} x {inp} = {}",
                data.len(),
                out * inp
            )));
        }
        check_finite(&name, data)?;
        self.blocks[block].linears[kind.index()].copy_from_slice(data);
        Ok(())
    }

    /// Token embedding, `vocab x hidden` row-major.
    pub fn embedding(&self) -> &[f32] {
        &self.embedding
    }

    /// Output head, `vocab x hidden` row-major (the embedding when tied).
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embedding)
    }

    /// Every stored tensor as (Hugging Face name, shape, data), in the order of
    /// [`TensorRole::all`]; `lm_head.weight` only when untied.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        TensorRole::all(&self.config)
            .into_iter()
            .map(|role| {
                let data = self.tensor(role).unwrap_or_default();
                (role.hf_name(), role.shape(&self.config), data)
            })
            .collect()
    }

    /// The values of the tensor that plays `role`, row-major (the embedding for a
    /// tied head); an error for a block index out of range.
    pub fn tensor(&self, role: TensorRole) -> Result<&[f32]> {
        Ok(match role {
            TensorRole::Embedding => &self.embedding,
            TensorRole::AttnNorm(b) => &self.block(b)?.attn_norm,
            TensorRole::MlpNorm(b) => &self.block(b)?.mlp_norm,
            TensorRole::Linear(b, kind) => &self.block(b)?.linears[kind.index()],
            TensorRole::FinalNorm => &self.final_norm,
            TensorRole::LmHead => self.lm_head(),
        })
    }
}

/// The error for a tensor a Llama model does not have.
pub(crate) fn unexpected_tensor(name: &str, source: &Path) -> LlamaIoError {
    LlamaIoError::Unsupported {
        path: source.to_path_buf(),
        msg: format!(
            "unexpected tensor `{name}` (biases, experts and other layers are not supported)"
        ),
    }
}

/// The configuration, tokenizer presence and device; not the weights.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer.is_some())
            .field(
                "tokenizer_source",
                &self.tokenizer_source.as_ref().map(|s| s.kind()),
            )
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Shape and finiteness check of one tensor read from `source`.
fn check_tensor(name: &str, expected: &[usize], tensor: &HostTensor, source: &Path) -> Result<()> {
    if tensor.shape != expected {
        return Err(LlamaIoError::Shape {
            path: source.to_path_buf(),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            actual: tensor.shape.clone(),
        });
    }
    if tensor.data.len() != expected.iter().product::<usize>() {
        return Err(LlamaIoError::Format {
            path: source.to_path_buf(),
            msg: format!(
                "tensor `{name}` has {} values for shape {expected:?}",
                tensor.data.len()
            ),
        });
    }
    if tensor.data.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(LlamaIoError::Format {
            path: source.to_path_buf(),
            msg: format!("tensor `{name}` contains non-finite values (NaN or infinity)"),
        })
    }
}

fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    if data.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(LlamaIoError::NonFinite {
            tensor: name.to_string(),
        })
    }
}
