//! The files that describe a tokenizer in a Hugging Face directory besides
//! `tokenizer.json`, carried over from what the model was read with, so that loaders
//! need not guess:
//! - `tokenizer_config.json`: the input's own (a Hugging Face input), or from a GGUF
//!   input's metadata the special tokens (`tokenizer.ggml.{bos,eos,unknown,padding}_token_id`
//!   looked up in `tokenizer.ggml.tokens`), `chat_template` (`tokenizer.chat_template`)
//!   and `add_bos_token` / `add_eos_token`; always with a `tokenizer_class` and
//!   `model_max_length` (added where missing);
//! - `special_tokens_map.json`: the special tokens of that config;
//! - `generation_config.json`: BOS, EOS and padding token ids (`config.json`'s, else the
//!   GGUF metadata's), written when one is known.

use candle_core::quantized::gguf_file::Value;
use serde_json::{Map, Value as Json, json};

use crate::error::{LlamaIoError, Result};
use crate::model::Model;
use crate::tokenizer::TokenizerSource;

/// The special tokens as `tokenizer_config.json` names them, with the GGUF key of each id.
const SPECIAL: [(&str, &str); 4] = [
    ("bos_token", "bos_token_id"),
    ("eos_token", "eos_token_id"),
    ("unk_token", "unknown_token_id"),
    ("pad_token", "padding_token_id"),
];

/// A GGUF metadata value as a token id.
fn id(keys: &[(String, Value)], key: &str) -> Option<u32> {
    let full = format!("tokenizer.ggml.{key}");
    keys.iter()
        .find(|(k, _)| *k == full)
        .and_then(|(_, v)| v.to_u32().ok())
}

/// The tokenizer files of `model`'s Hugging Face directory besides `tokenizer.json`
/// (module docs), as (file name, JSON), or none without a tokenizer.
///
/// # Errors
/// A Hugging Face `tokenizer_config.json` that is not a JSON object.
pub(crate) fn tokenizer_files(model: &Model) -> Result<Vec<(&'static str, Json)>> {
    if model.tokenizer.is_none() {
        return Ok(Vec::new());
    }
    let config = model.config();
    let source = model.tokenizer_source();
    let mut tc: Map<String, Json> = match source {
        Some(TokenizerSource::HuggingFace {
            tokenizer_config: Some(text),
            ..
        }) => match serde_json::from_str(text) {
            Ok(Json::Object(map)) => map,
            _ => {
                return Err(LlamaIoError::Tokenizer(
                    "the input's tokenizer_config.json is not a JSON object".into(),
                ));
            }
        },
        _ => Map::new(),
    };
    let (mut bos, mut eos, mut pad) = (config.bos_token_id, config.eos_token_id, None);
    if let Some(TokenizerSource::Gguf(keys)) = source {
        let tokens: Vec<String> = keys
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| v.to_vec().ok())
            .map(|list| {
                list.iter()
                    .map(|t| t.to_string().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        for (name, key) in SPECIAL {
            if let Some(token) = id(keys, key).and_then(|i| tokens.get(i as usize)) {
                tc.insert(name.into(), Json::String(token.clone()));
            }
        }
        for (k, v) in keys {
            match (k.as_str(), v) {
                ("tokenizer.chat_template", Value::String(t)) => {
                    tc.insert("chat_template".into(), Json::String(t.clone()));
                }
                ("tokenizer.ggml.add_bos_token", Value::Bool(b)) => {
                    tc.insert("add_bos_token".into(), Json::Bool(*b));
                }
                ("tokenizer.ggml.add_eos_token", Value::Bool(b)) => {
                    tc.insert("add_eos_token".into(), Json::Bool(*b));
                }
                _ => {}
            }
        }
        tc.entry("clean_up_tokenization_spaces")
            .or_insert(Json::Bool(false));
        bos = bos.or(id(keys, "bos_token_id"));
        eos = eos.or(id(keys, "eos_token_id"));
        pad = id(keys, "padding_token_id");
    }
    tc.entry("tokenizer_class")
        .or_insert_with(|| json!("PreTrainedTokenizerFast"));
    tc.entry("model_max_length")
        .or_insert_with(|| json!(config.max_position_embeddings));

    let special: Map<String, Json> = SPECIAL
        .iter()
        .filter_map(|(name, _)| tc.get(*name).map(|v| (name.to_string(), v.clone())))
        .filter(|(_, v)| !v.is_null())
        .collect();
    let mut files = vec![("tokenizer_config.json", Json::Object(tc))];
    if !special.is_empty() {
        files.push(("special_tokens_map.json", Json::Object(special)));
    }
    let generation: Map<String, Json> = [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("pad_token_id", pad),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), json!(v))))
    .collect();
    if !generation.is_empty() {
        files.push(("generation_config.json", Json::Object(generation)));
    }
    Ok(files)
}
