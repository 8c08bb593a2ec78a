//! GGUF (v2/v3) files with `general.architecture = llama`: metadata, tensors in every
//! type candle dequantizes ([`READABLE_TYPES`]: F32, F16, BF16, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) dequantized to f32, the Q/K row
//! permutation of llama.cpp undone, and the tokenizer rebuilt from the GGUF
//! vocabulary (its `tokenizer.*` metadata kept as read for the writer).
//!
//! **Q/K permutation.** llama.cpp applies RoPE to adjacent pairs `(2j, 2j+1)` of a
//! head, Hugging Face to `(j, j + h/2)` (`rotate_half`, `h` = head dim). Its converter
//! therefore reorders the rows of `q_proj` and `k_proj` within each head: GGUF row
//! `2j + s` holds Hugging Face row `s * h/2 + j` (`j < h/2`, `s` in {0, 1}).
//! [`unpermute_qk`] maps GGUF rows to the Hugging Face order, [`permute_qk`] back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};

pub use crate::gguf_header::{READABLE_TYPES, ggml_type_id, ggml_type_name};
pub use crate::qk_order::{permute_qk, permute_qk_rows, unpermute_qk, unpermute_qk_rows};

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::gguf_header::{read_content, readable_list};
use crate::linear::LinearKind;
use crate::model::{Model, SourceTensor, unexpected_tensor};
use crate::names::{TensorRole, missing_before_sizing};
use crate::stored::StoredTensor;
use crate::tokenizer::TokenizerSource;

/// Reads a llama GGUF file into a [`Model`] (module docs).
pub(crate) fn read_gguf(path: &Path) -> Result<Model> {
    let (content, _) = read_content(path)?;
    let config = config_from_gguf(&content, path)?;
    let present = |role: TensorRole| content.tensor_infos.contains_key(&role.gguf_name());
    if let Some(role) = missing_before_sizing(&config, content.tensor_infos.len(), present) {
        return Err(LlamaIoError::MissingTensor {
            path: path.to_path_buf(),
            tensor: role.gguf_name(),
        });
    }

    let roles: HashMap<String, TensorRole> = TensorRole::all(&config)
        .into_iter()
        .map(|role| (role.gguf_name(), role))
        .collect();
    // Check every tensor before reading any: known name, supported type, bytes
    // inside the file and not shared with another tensor.
    let mut gguf_names: Vec<&String> = content.tensor_infos.keys().collect();
    gguf_names.sort();
    for &gguf_name in &gguf_names {
        let info = &content.tensor_infos[gguf_name];
        if !roles.contains_key(gguf_name) {
            return Err(unexpected_tensor(gguf_name, path));
        }
        if !READABLE_TYPES.contains(&info.ggml_dtype) {
            return Err(LlamaIoError::Unsupported {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{gguf_name}` has type {}, which candle cannot dequantize; readable: {}",
                    ggml_type_name(info.ggml_dtype),
                    readable_list()
                ),
            });
        }
    }

    // Every tensor stays in the file (read when used); the Q/K rows are put back
    // into the Hugging Face order as they are read.
    let file = std::fs::File::open(path).map_err(|source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = (Arc::new(file), Arc::new(path.to_path_buf()));
    let mut tensors = HashMap::with_capacity(gguf_names.len());
    let mut source_dtypes = HashMap::with_capacity(gguf_names.len());
    for gguf_name in gguf_names {
        let info = &content.tensor_infos[gguf_name];
        let role = roles[gguf_name];
        source_dtypes.insert(role.hf_name(), info.ggml_dtype);
        let shape = info.shape.dims().to_vec();
        let qk_heads = match role {
            // A wrong shape is left alone here and reported by the model builder.
            TensorRole::Linear(_, LinearKind::Q) if shape == role.shape(&config) => {
                Some(config.num_attention_heads)
            }
            TensorRole::Linear(_, LinearKind::K) if shape == role.shape(&config) => {
                Some(config.num_key_value_heads)
            }
            _ => None,
        };
        let offset = content.tensor_data_offset + info.offset;
        let stored = StoredTensor::ggml(
            (Arc::clone(&file.0), Arc::clone(&file.1)),
            gguf_name,
            shape,
            info.ggml_dtype,
            offset,
            qk_heads,
        );
        tensors.insert(gguf_name.clone(), SourceTensor::Stored(stored));
    }

    let tokenizer = if content.metadata.contains_key("tokenizer.ggml.tokens") {
        Some(crate::tokenizer::tokenizer_from_gguf(&content, path)?)
    } else {
        None
    };
    let keys = crate::tokenizer::gguf_tokenizer_keys(&content);
    let mut model =
        Model::from_named_tensors(config, tensors, tokenizer, path, TensorRole::gguf_name)?;
    model.source_dtypes = source_dtypes;
    model.tokenizer_source = (!keys.is_empty()).then_some(TokenizerSource::Gguf(keys));
    Ok(model)
}

/// [`LlamaConfig`] from the `llama.*` metadata of a GGUF file.
pub(crate) fn config_from_gguf(content: &Content, path: &Path) -> Result<LlamaConfig> {
    let meta = &content.metadata;
    let format = |msg: String| LlamaIoError::format(path, msg);
    let unsupported = |msg: String| LlamaIoError::unsupported(path, msg);
    let arch = match meta.get("general.architecture") {
        Some(Value::String(a)) => a.as_str(),
        Some(v) => {
            return Err(format(format!(
                "`general.architecture` is {v:?}, expected a string"
            )));
        }
        None => return Err(format("`general.architecture` is missing".into())),
    };
    if arch != "llama" {
        return Err(unsupported(format!(
            "architecture {arch:?}, only \"llama\" is supported"
        )));
    }
    let int = |key: &str| -> Result<Option<u64>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v).map(Some).ok_or_else(|| {
                format(format!("`{key}` is {v:?}, expected a non-negative integer"))
            }),
        }
    };
    let required = |key: &str| -> Result<usize> {
        int(key)?
            .map(|v| v as usize)
            .ok_or_else(|| format(format!("`{key}` is missing")))
    };
    let float = |key: &str| -> Result<Option<f64>> {
        match meta.get(key) {
            None => Ok(None),
            // The shortest decimal that reads back as this f32 (1e-5, not
            // 9.99999974e-6): these are decimal constants stored in single precision.
            Some(Value::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(f64::from(*x)))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(format(format!("`{key}` is {v:?}, expected a float"))),
        }
    };
    if int("llama.expert_count")?.is_some_and(|n| n > 0) {
        return Err(unsupported(
            "`llama.expert_count` is set (mixture of experts)".into(),
        ));
    }
    match meta.get("llama.rope.scaling.type") {
        None => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(v) => {
            return Err(unsupported(format!(
                "rope scaling {v:?} (only none is supported)"
            )));
        }
    }
    let hidden_size = required("llama.embedding_length")?;
    let num_attention_heads = required("llama.attention.head_count")?;
    let head_dim = match int("llama.attention.key_length")? {
        Some(d) => d as usize,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0,
    };
    if let Some(rot) = int("llama.rope.dimension_count")?
        && rot as usize != head_dim
    {
        return Err(unsupported(format!(
            "`llama.rope.dimension_count` is {rot} but the head dimension is {head_dim} (partial rotary)"
        )));
    }
    let vocab_size = match int("llama.vocab_size")? {
        Some(v) => v as usize,
        None => match meta.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            _ => match content.tensor_infos.get("token_embd.weight") {
                Some(info) => info.shape.dims()[0],
                None => {
                    return Err(LlamaIoError::MissingTensor {
                        path: path.to_path_buf(),
                        tensor: "token_embd.weight".into(),
                    });
                }
            },
        },
    };
    let token = |key: &str| -> Result<Option<u32>> { Ok(int(key)?.map(|v| v as u32)) };
    let config = LlamaConfig {
        hidden_size,
        intermediate_size: required("llama.feed_forward_length")?,
        num_hidden_layers: required("llama.block_count")?,
        num_attention_heads,
        num_key_value_heads: int("llama.attention.head_count_kv")?
            .map_or(num_attention_heads, |v| v as usize),
        head_dim,
        vocab_size,
        rope_theta: float("llama.rope.freq_base")?.unwrap_or(10_000.0),
        rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        max_position_embeddings: int("llama.context_length")?.map_or(2048, |v| v as usize),
        bos_token_id: token("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token("tokenizer.ggml.eos_token_id")?,
    };
    config.validate(path)?;
    Ok(config)
}

fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(u64::from(x)),
        Value::U16(x) => Some(u64::from(x)),
        Value::U32(x) => Some(u64::from(x)),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}
