//! [`Model`]: the f32 weights of a Llama model in the Hugging Face layout, its
//! configuration and (optionally) its tokenizer.
//!
//! Every weight lives in its own contiguous `Vec<f32>`, except the linear layers of a
//! model read from a file (safetensors or GGUF), which stay there in their stored
//! encoding ([`StoredTensor`]) until they are changed or read in, so that a model larger than the memory is
//! only ever in f32 one layer at a time. A linear layer's values are the PyTorch weight
//! `(out x in)` row-major, which is the paper's `W` (`in x out`) column-major, so a
//! caller can view them as a matrix without a copy.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use tokenizers::Tokenizer;

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::linear::LinearKind;
use crate::names::{Naming, TensorRole, missing_before_sizing};
use crate::stored::StoredTensor;
use crate::tokenizer::TokenizerSource;

/// A dense f32 tensor on the host: shape (outermost first) and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

/// A tensor as [`Model::hf_tensors`] lists it: Hugging Face name, shape, values.
pub type NamedValues<'a> = (String, Vec<usize>, Cow<'a, [f32]>);

/// A tensor as a reader hands it over: values in memory, or left in its file.
pub(crate) enum SourceTensor {
    Host(HostTensor),
    Stored(StoredTensor),
}

impl SourceTensor {
    fn shape(&self) -> &[usize] {
        match self {
            SourceTensor::Host(t) => &t.shape,
            SourceTensor::Stored(t) => t.shape(),
        }
    }
}

/// A tensor's values (a linear layer's weight: `(out x in)` row-major): in memory,
/// or in its file.
#[derive(Debug, Clone)]
pub(crate) enum TensorValues {
    Resident(Vec<f32>),
    Stored(StoredTensor),
}

impl TensorValues {
    /// The values: borrowed when resident, read from the file otherwise.
    pub(crate) fn values(&self) -> Result<Cow<'_, [f32]>> {
        match self {
            TensorValues::Resident(v) => Ok(Cow::Borrowed(v)),
            TensorValues::Stored(t) => Ok(Cow::Owned(t.read()?)),
        }
    }

    /// The values, moved out when resident, read from the file otherwise.
    fn into_values(self) -> Result<Vec<f32>> {
        match self {
            TensorValues::Resident(v) => Ok(v),
            TensorValues::Stored(t) => t.read(),
        }
    }
}

/// The weights of one decoder block.
#[derive(Debug, Clone)]
pub(crate) struct BlockWeights {
    /// RMSNorm gain before attention (`input_layernorm`), `hidden` values.
    pub(crate) attn_norm: Vec<f32>,
    /// RMSNorm gain before the MLP (`post_attention_layernorm`), `hidden` values.
    pub(crate) mlp_norm: Vec<f32>,
    /// The seven linear weights, indexed by [`LinearKind::index`].
    pub(crate) linears: [TensorValues; 7],
}

/// A Llama model seen in f32 on the host, in the Hugging Face layout (RoPE
/// `rotate_half`, PyTorch `(out x in)` weights), whatever file it came from; its linear
/// weights in memory or read from their file when used (module docs).
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
        tensors: HashMap<String, HostTensor>,
        tokenizer: Option<Tokenizer>,
        source: &Path,
    ) -> Result<Self> {
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| (name, SourceTensor::Host(t)))
            .collect();
        Self::from_hf_sources(config, tensors, tokenizer, source)
    }

    /// [`Model::from_hf_tensors`] for tensors in memory or left in their files.
    pub(crate) fn from_hf_sources(
        config: LlamaConfig,
        mut tensors: HashMap<String, SourceTensor>,
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
    /// [`TensorRole::all`] must be present with its shape and finite values (a stored
    /// tensor is read once to check), and no other tensor may be left over; stored
    /// linear weights stay in their file. Errors use the file's own names.
    pub(crate) fn from_named_tensors(
        config: LlamaConfig,
        mut tensors: HashMap<String, SourceTensor>,
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
        let mut take = |role: TensorRole| -> Result<TensorValues> {
            let name = naming(role);
            let tensor = tensors
                .remove(&name)
                .ok_or_else(|| LlamaIoError::MissingTensor {
                    path: source.to_path_buf(),
                    tensor: name.clone(),
                })?;
            // Only linear weights stay in their file; the rest is kept from the check's read.
            let keep = !matches!(role, TensorRole::Linear(..));
            check_tensor(&name, &role.shape(&config), tensor, source, keep)
        };
        let embedding = take(TensorRole::Embedding)?.into_values()?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for b in 0..config.num_hidden_layers {
            let attn_norm = take(TensorRole::AttnNorm(b))?.into_values()?;
            let mlp_norm = take(TensorRole::MlpNorm(b))?.into_values()?;
            let mut linears = Vec::with_capacity(LinearKind::ALL.len());
            for kind in LinearKind::ALL {
                linears.push(take(TensorRole::Linear(b, kind))?);
            }
            blocks.push(BlockWeights {
                attn_norm,
                mlp_norm,
                linears: linears.try_into().expect("one weight per kind"),
            });
        }
        let final_norm = take(TensorRole::FinalNorm)?.into_values()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take(TensorRole::LmHead)?.into_values()?)
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
    /// i.e. `W` (`in x out`) column-major; read from its file when it is stored there.
    pub fn linear_weight(&self, block: usize, kind: LinearKind) -> Result<Cow<'_, [f32]>> {
        self.tensor(TensorRole::Linear(block, kind))
    }

    /// Whether the weight of linear layer `kind` of block `block` is in memory (not
    /// left in a file).
    pub fn is_resident(&self, block: usize, kind: LinearKind) -> Result<bool> {
        Ok(matches!(
            self.block(block)?.linears[kind.index()],
            TensorValues::Resident(_)
        ))
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
        self.blocks[block].linears[kind.index()] = TensorValues::Resident(data.to_vec());
        Ok(())
    }

    /// Reads the linear weights of `block` that are stored in a file into memory, where
    /// they stay until replaced (the forward pass then reads none of them from disk).
    ///
    /// # Errors
    /// A block out of range; a stored weight that cannot be read.
    pub fn make_resident(&mut self, block: usize) -> Result<()> {
        self.block(block)?;
        for weight in &mut self.blocks[block].linears {
            if let TensorValues::Stored(t) = weight {
                *weight = TensorValues::Resident(t.read()?);
            }
        }
        Ok(())
    }

    /// Replaces the weight of linear layer `kind` of block `block` with `tensor`, left
    /// in its file (this is how a finished block leaves the memory: its weights are
    /// read from where they were saved). The shape must be `(out, in)`, otherwise
    /// nothing changes; the values are checked when read.
    pub fn set_linear_stored(
        &mut self,
        block: usize,
        kind: LinearKind,
        tensor: StoredTensor,
    ) -> Result<()> {
        let (out, inp) = self.linear_shape(kind);
        self.block(block)?;
        if tensor.shape() != [out, inp] {
            return Err(LlamaIoError::InvalidArgument(format!(
                "stored weight `{}` in {} for `{}` has shape {:?}, expected [{out}, {inp}]",
                tensor.name(),
                tensor.path().display(),
                kind.hf_name(block),
                tensor.shape()
            )));
        }
        self.blocks[block].linears[kind.index()] = TensorValues::Stored(tensor);
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

    /// Every tensor as (Hugging Face name, shape, values), in the order of
    /// [`TensorRole::all`]; `lm_head.weight` only when untied. Stored linear weights
    /// are all read: for a model larger than the memory, use [`Model::tensor`] one
    /// role at a time.
    ///
    /// # Errors
    /// A stored weight that cannot be read.
    pub fn hf_tensors(&self) -> Result<Vec<NamedValues<'_>>> {
        TensorRole::all(&self.config)
            .into_iter()
            .map(|role| Ok((role.hf_name(), role.shape(&self.config), self.tensor(role)?)))
            .collect()
    }

    /// The values of the tensor that plays `role`, row-major (the embedding for a
    /// tied head); a stored linear weight is read from its file.
    ///
    /// # Errors
    /// A block index out of range; a stored weight that cannot be read.
    pub fn tensor(&self, role: TensorRole) -> Result<Cow<'_, [f32]>> {
        Ok(Cow::Borrowed(match role {
            TensorRole::Embedding => &self.embedding,
            TensorRole::AttnNorm(b) => &self.block(b)?.attn_norm,
            TensorRole::MlpNorm(b) => &self.block(b)?.mlp_norm,
            TensorRole::Linear(b, kind) => return self.block(b)?.linears[kind.index()].values(),
            TensorRole::FinalNorm => &self.final_norm,
            TensorRole::LmHead => self.lm_head(),
        }))
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

/// Shape and finiteness check of one tensor read from `source` (a stored tensor is read
/// once to check it); its values: a stored tensor stays in its file unless `keep`, where
/// the values read for the check are kept.
fn check_tensor(
    name: &str,
    expected: &[usize],
    tensor: SourceTensor,
    source: &Path,
    keep: bool,
) -> Result<TensorValues> {
    if tensor.shape() != expected {
        return Err(LlamaIoError::Shape {
            path: source.to_path_buf(),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            actual: tensor.shape().to_vec(),
        });
    }
    let tensor = match tensor {
        SourceTensor::Host(t) => t,
        SourceTensor::Stored(t) => {
            let values = t.read()?;
            return Ok(if keep {
                TensorValues::Resident(values)
            } else {
                TensorValues::Stored(t)
            });
        }
    };
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
        Ok(TensorValues::Resident(tensor.data))
    } else {
        Err(LlamaIoError::Format {
            path: source.to_path_buf(),
            msg: format!("tensor `{name}` contains non-finite values (NaN or infinity)"),
        })
    }
}

pub(crate) fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    if data.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(LlamaIoError::NonFinite {
            tensor: name.to_string(),
        })
    }
}
