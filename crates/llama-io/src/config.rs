//! The architecture hyper-parameters of a Llama model, read from a Hugging Face
//! `config.json` or from GGUF metadata, and written back as a `config.json` that
//! `transformers` (`LlamaForCausalLM`) loads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{LlamaIoError, Result};

/// Hyper-parameters of a Llama decoder (no biases, SwiGLU MLP, RMSNorm, RoPE in the
/// Hugging Face `rotate_half` layout, grouped-query attention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream (`d`).
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP (rows of `gate_proj` and `up_proj`).
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (divides `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Width of one attention head (even; usually `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Rows of the token embedding and of the output head.
    pub vocab_size: usize,
    /// RoPE base: pair `i` of a head rotates by `pos * rope_theta^(-2i / head_dim)`.
    pub rope_theta: f64,
    /// The epsilon of RMSNorm: `x / sqrt(mean(x^2) + eps) * g`.
    pub rms_norm_eps: f64,
    /// Whether the output head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Context length the model was trained for (informational; not enforced).
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token, if known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, if known.
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Rows of `q_proj`: `num_attention_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Rows of `k_proj` and `v_proj`: `num_key_value_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Checks that windows of `tokens` tokens fit the model's context
    /// (`max_position_embeddings`): longer ones put tokens at positions the model never
    /// saw in training, and attention's memory grows with the square of the length.
    ///
    /// # Errors
    /// [`LlamaIoError::InvalidArgument`] naming both lengths.
    pub fn check_window(&self, tokens: usize) -> Result<()> {
        if tokens > self.max_position_embeddings {
            return Err(LlamaIoError::InvalidArgument(format!(
                "windows of {tokens} tokens are longer than the model's context of {} tokens \
                 (max_position_embeddings, or llama.context_length in a GGUF)",
                self.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Checks the relations the forward pass relies on; `path` names the source in
    /// the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| {
            Err(LlamaIoError::Format {
                path: path.to_path_buf(),
                msg,
            })
        };
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("`{name}` is zero"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} is odd (RoPE rotates pairs)",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "rope_theta {} is not a positive number",
                self.rope_theta
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!(
                "rms_norm_eps {} is not a non-negative number",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json` (the text `json`, read from `path`).
    ///
    /// Rejects, naming the field: another `model_type`, biases (`attention_bias`,
    /// `mlp_bias`), mixtures of experts, an activation other than SiLU, and any
    /// `rope_scaling` other than none / `"default"`.
    pub fn from_hf_json(json: &str, path: &Path) -> Result<Self> {
        let format = |msg: String| LlamaIoError::format(path, msg);
        let unsupported = |msg: String| LlamaIoError::unsupported(path, msg);
        let map: Map<String, Value> =
            serde_json::from_str(json).map_err(|e| format(format!("not a JSON object: {e}")))?;
        let model_type = map.get("model_type").and_then(Value::as_str);
        if model_type != Some("llama") {
            return Err(unsupported(format!(
                "model_type is {}, only \"llama\" is supported",
                model_type.map_or("absent".to_string(), |t| format!("{t:?}"))
            )));
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if map.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(format!("`{flag}` is true (biases)")));
            }
        }
        for key in ["num_local_experts", "num_experts", "n_routed_experts"] {
            if map.get(key).is_some_and(|v| !v.is_null()) {
                return Err(unsupported(format!("`{key}` is set (mixture of experts)")));
            }
        }
        if let Some(act) = map.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(unsupported(format!(
                "hidden_act {act:?}, only \"silu\" is supported"
            )));
        }
        match map.get("rope_scaling") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(Value::as_str);
                if kind != Some("default") {
                    return Err(unsupported(format!(
                        "rope_scaling {v} (only none is supported)"
                    )));
                }
            }
        }
        let usize_field = |key: &str| -> Result<Option<usize>> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    format(format!("`{key}` is {v}, expected a non-negative integer"))
                }),
            }
        };
        let required = |key: &str| -> Result<usize> {
            usize_field(key)?.ok_or_else(|| format(format!("`{key}` is missing")))
        };
        let f64_field = |key: &str, default: f64| -> Result<f64> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| format(format!("`{key}` is {v}, expected a number"))),
            }
        };
        let token_id = |key: &str| -> Result<Option<u32>> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                // Several eos ids: keep the first (it is informational here).
                Some(Value::Array(ids)) => {
                    Ok(ids.first().and_then(Value::as_u64).map(|x| x as u32))
                }
                Some(v) => v
                    .as_u64()
                    .map(|x| Some(x as u32))
                    .ok_or_else(|| format(format!("`{key}` is {v}, expected a token id"))),
            }
        };
        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        let head_dim = match usize_field("head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let config = LlamaConfig {
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: usize_field("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim,
            vocab_size: required("vocab_size")?,
            rope_theta: f64_field("rope_theta", 10_000.0)?,
            rms_norm_eps: f64_field("rms_norm_eps", 1e-6)?,
            tie_word_embeddings: match map.get("tie_word_embeddings") {
                None | Some(Value::Null) => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    format(format!("`tie_word_embeddings` is {v}, expected a bool"))
                })?,
            },
            max_position_embeddings: usize_field("max_position_embeddings")?.unwrap_or(2048),
            bos_token_id: token_id("bos_token_id")?,
            eos_token_id: token_id("eos_token_id")?,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// The `config.json` of a `LlamaForCausalLM` with weights stored as `torch_dtype`
    /// (`"float32"`, `"float16"` or `"bfloat16"`).
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "torch_dtype": torch_dtype,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "initializer_range": 0.02,
            "use_cache": true,
        })
    }
}
