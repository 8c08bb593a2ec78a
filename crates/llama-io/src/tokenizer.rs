//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate, and the
//! GPT-2 byte-level BPE tokenizer that a GGUF file describes in its `tokenizer.ggml.*`
//! metadata, rebuilt as the same `tokenizers::Tokenizer`.
//!
//! GGUF support covers `tokenizer.ggml.model = "gpt2"` with the pre-tokenizers
//! `"default"`/`"gpt2"` (the GPT-2 regex) and `"smollm"` (every digit on its own, then
//! the GPT-2 regex), as llama.cpp defines them; no prefix space; control tokens
//! (`token_type` 3) are special tokens, matched whole and never split. A BOS token is
//! prepended only when `tokenizer.ggml.add_bos_token` is true. Anything else is an
//! error naming the field.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{LlamaIoError, Result};

/// Loads a Hugging Face `tokenizer.json`.
///
/// # Errors
/// [`LlamaIoError::Tokenizer`] naming the file when it cannot be read or parsed.
pub fn tokenizer_from_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| LlamaIoError::Tokenizer(format!("{}: {e}", path.display())))
}

/// GGUF token type of control tokens (llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`).
const CONTROL: i32 = 3;

/// Rebuilds the tokenizer of a GGUF file from its metadata (`path` is only for errors).
///
/// # Errors
/// [`LlamaIoError::Unsupported`] for tokenizer models or pre-tokenizers other than
/// those in the module docs; [`LlamaIoError::Format`] for missing or mistyped fields,
/// merges that are not two tokens, or merges of tokens not in the vocabulary.
pub fn tokenizer_from_gguf(content: &Content, path: &Path) -> Result<Tokenizer> {
    let meta = &content.metadata;
    let format = |msg: String| LlamaIoError::format(path, msg);
    let unsupported = |msg: String| LlamaIoError::unsupported(path, msg);
    let field = |key: &str| {
        meta.get(key)
            .ok_or_else(|| format(format!("missing metadata `{key}`")))
    };
    let string = |key: &str| -> Result<String> {
        field(key)?
            .to_string()
            .cloned()
            .map_err(|e| format(format!("metadata `{key}`: {e}")))
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        let values = field(key)?
            .to_vec()
            .map_err(|e| format(format!("metadata `{key}`: {e}")))?;
        values
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format(format!("metadata `{key}`: {e}")))
    };
    let flag = |key: &str| -> Result<bool> {
        meta.get(key).map_or(Ok(false), |v| {
            v.to_bool()
                .map_err(|e| format(format!("metadata `{key}`: {e}")))
        })
    };

    let model = string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(unsupported(format!(
            "tokenizer.ggml.model = {model:?}; only \"gpt2\" (byte-level BPE) is supported"
        )));
    }
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(_) => string("tokenizer.ggml.pre")?,
        None => "default".to_string(),
    };
    let byte_level = ByteLevel::new(false, false, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "default" | "gpt2" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        other => {
            return Err(unsupported(format!(
                "tokenizer.ggml.pre = {other:?}; supported: \"default\", \"gpt2\", \"smollm\""
            )));
        }
    };
    if flag("tokenizer.ggml.add_space_prefix")? {
        return Err(unsupported(
            "tokenizer.ggml.add_space_prefix = true is not supported".into(),
        ));
    }

    let tokens = strings("tokenizer.ggml.tokens")?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(format(
            "tokenizer.ggml.tokens holds the same token twice".into(),
        ));
    }
    let merges = strings("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(rank, merge)| match merge.split_once(' ') {
            Some((a, b)) if vocab.contains_key(a) && vocab.contains_key(b) => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(format(format!(
                "tokenizer.ggml.merges[{rank}] = {merge:?} is not two vocabulary tokens"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format(format!("building the BPE model: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens are matched whole, before pre-tokenization.
    let token_types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) => types
            .iter()
            .map(Value::to_i32)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format(format!("metadata `tokenizer.ggml.token_type`: {e}")))?,
        Some(_) => {
            return Err(format(
                "metadata `tokenizer.ggml.token_type` is not an array".into(),
            ));
        }
        None => vec![],
    };
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(format(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            token_types.len(),
            tokens.len()
        )));
    }
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|&(_, &t)| t == CONTROL)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| format(format!("adding the control tokens: {e}")))?;

    if flag("tokenizer.ggml.add_bos_token")? {
        let id = field("tokenizer.ggml.bos_token_id")?
            .to_u32()
            .map_err(|e| format(format!("metadata `tokenizer.ggml.bos_token_id`: {e}")))?;
        let bos = tokens
            .get(id as usize)
            .ok_or_else(|| format(format!("BOS token id {id} is outside the vocabulary")))?;
        let processor = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .map_err(|e| format(format!("BOS template: {e}")))?
            .special_tokens(vec![(bos.clone(), id)])
            .build()
            .map_err(|e| format(format!("BOS template: {e}")))?;
        tokenizer.with_post_processor(Some(processor));
    }
    Ok(tokenizer)
}
