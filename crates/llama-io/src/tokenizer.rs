//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate, and the
//! GPT-2 byte-level BPE tokenizer that a GGUF file describes in its `tokenizer.ggml.*`
//! metadata, rebuilt as the same `tokenizers::Tokenizer`.
//!
//! GGUF support covers `tokenizer.ggml.model = "gpt2"` with the pre-tokenizers
//! `"default"`/`"gpt2"`/`"gpt-2"` (the GPT-2 regex) and `"smollm"` (every digit on its own, then
//! the GPT-2 regex), as llama.cpp defines them; no prefix space; control tokens
//! (`token_type` 3) are special tokens, matched whole and never split. A BOS token is
//! prepended only when `tokenizer.ggml.add_bos_token` is true. Anything else is an
//! error naming the field.
//!
//! The other way, [`gguf_tokenizer_metadata`] describes a Hugging Face byte-level BPE
//! `tokenizer.json` in `tokenizer.*` metadata as llama.cpp's `convert_hf_to_gguf.py`
//! does, with the pre-tokenizer name chosen by llama.cpp's own rule
//! ([`llama_cpp_pre_tokenizer`]).

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

use crate::config::LlamaConfig;
use crate::error::{CandleMessage, LlamaIoError, Result};

/// Loads a Hugging Face `tokenizer.json`. The text is parsed as JSON first: the
/// `tokenizers` library panics on some malformed JSON (its decoder deserializer expects
/// a parse to succeed), so only valid JSON reaches it.
///
/// # Errors
/// [`LlamaIoError::Tokenizer`] naming the file when it cannot be read, is not JSON, or
/// does not describe a tokenizer.
pub fn tokenizer_from_json(path: &Path) -> Result<Tokenizer> {
    let fail =
        |e: &dyn std::fmt::Display| LlamaIoError::Tokenizer(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| fail(&format_args!("not JSON: {e}")))?;
    text.parse::<Tokenizer>().map_err(|e| fail(&e))
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
            .map_err(|e| format(format!("metadata `{key}`: {}", CandleMessage(&e))))
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        let values = field(key)?
            .to_vec()
            .map_err(|e| format(format!("metadata `{key}`: {}", CandleMessage(&e))))?;
        values
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format(format!("metadata `{key}`: {}", CandleMessage(&e))))
    };
    let flag = |key: &str| -> Result<bool> {
        meta.get(key).map_or(Ok(false), |v| {
            v.to_bool()
                .map_err(|e| format(format!("metadata `{key}`: {}", CandleMessage(&e))))
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
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        other => {
            return Err(unsupported(format!(
                "tokenizer.ggml.pre = {other:?}; supported: \"default\", \"gpt2\", \"gpt-2\", \"smollm\""
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
            .map_err(|e| {
                format(format!(
                    "metadata `tokenizer.ggml.token_type`: {}",
                    CandleMessage(&e)
                ))
            })?,
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
            .map_err(|e| {
                format(format!(
                    "metadata `tokenizer.ggml.bos_token_id`: {}",
                    CandleMessage(&e)
                ))
            })?;
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

/// Where a model's tokenizer came from, kept so that the GGUF writer can describe it
/// as the source file did.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// The `tokenizer.*` metadata of a GGUF file, as read, sorted by key.
    Gguf(Vec<(String, Value)>),
    /// The text of a Hugging Face `tokenizer.json` and, when the directory has one, of
    /// its `tokenizer_config.json`.
    HuggingFace {
        /// `tokenizer.json` as read.
        tokenizer_json: String,
        /// `tokenizer_config.json` as read, if present.
        tokenizer_config: Option<String>,
    },
}

impl TokenizerSource {
    /// `"gguf"` or `"huggingface"`.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenizerSource::Gguf(_) => "gguf",
            TokenizerSource::HuggingFace { .. } => "huggingface",
        }
    }
}

/// The `tokenizer.*` metadata of a GGUF file, sorted by key (what
/// [`TokenizerSource::Gguf`] keeps).
pub fn gguf_tokenizer_keys(content: &Content) -> Vec<(String, Value)> {
    let mut keys: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys
}

/// The text whose token ids llama.cpp hashes to recognise a BPE pre-tokenizer
/// (`chktxt` of `get_vocab_base_pre` in `convert_hf_to_gguf.py`).
pub const LLAMA_CPP_CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// Known `chkhsh` values, the `tokenizer.ggml.pre` name llama.cpp gives each and the
/// model it was taken from (`get_vocab_base_pre` in `convert_hf_to_gguf.py`; a subset).
const KNOWN_PRE_TOKENIZERS: [(&str, &str, &str); 4] = [
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
        "HuggingFaceTB/SmolLM-135M, also SmolLM2",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
        "openai-community/gpt2",
    ),
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
        "evilfreelancer/ruGPT3XL",
    ),
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
        "meta-llama/Meta-Llama-3-8B",
    ),
];

/// llama.cpp's `chkhsh` of `tokenizer`: the SHA-256 (hex) of Python's `str()` of the
/// token ids of [`LLAMA_CPP_CHKTXT`], encoded with special tokens as
/// `tokenizer.encode(chktxt)` does in `transformers`.
///
/// # Errors
/// [`LlamaIoError::Tokenizer`] when encoding fails.
pub fn llama_cpp_chkhsh(tokenizer: &Tokenizer) -> Result<String> {
    use sha2::{Digest, Sha256};
    let encoding = tokenizer
        .encode(LLAMA_CPP_CHKTXT, true)
        .map_err(|e| LlamaIoError::Tokenizer(format!("encoding llama.cpp's check text: {e}")))?;
    let ids: Vec<String> = encoding.get_ids().iter().map(u32::to_string).collect();
    let text = format!("[{}]", ids.join(", "));
    let digest = Sha256::digest(text.as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `tokenizer.ggml.pre` name llama.cpp's converter gives `tokenizer`: its
/// [`llama_cpp_chkhsh`] looked up among the hashes this crate knows.
///
/// # Errors
/// [`LlamaIoError::Tokenizer`] for a hash this crate does not know (naming the hash and
/// the known tokenizers): the pre-tokenizer is not guessed.
pub fn llama_cpp_pre_tokenizer(tokenizer: &Tokenizer) -> Result<&'static str> {
    let hash = llama_cpp_chkhsh(tokenizer)?;
    KNOWN_PRE_TOKENIZERS
        .iter()
        .find(|(h, _, _)| *h == hash)
        .map(|&(_, name, _)| name)
        .ok_or_else(|| {
            let known: Vec<String> = KNOWN_PRE_TOKENIZERS
                .iter()
                .map(|(_, name, model)| format!("{name} ({model})"))
                .collect();
            LlamaIoError::Tokenizer(format!(
                "unknown BPE pre-tokenizer: llama.cpp's check hash of this tokenizer is {hash}, \
                 not one of the known {}; name the pre-tokenizer explicitly \
                 (GgufOptions::tokenizer_pre) if you know it",
                known.join(", ")
            ))
        })
}

/// GGUF token types (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
const NORMAL: i32 = 1;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Special-token kinds in `SpecialVocab`'s order, with their GGUF key suffix
/// (llama.cpp spells `seperator`).
const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("cls", "cls_token_id"),
    ("mask", "mask_token_id"),
];

/// Sets `typ`'s flag in `list`: always when `force`, else only when not yet set.
fn set_flag(list: &mut Vec<(&'static str, bool)>, typ: &'static str, value: bool, force: bool) {
    match list.iter_mut().find(|(t, _)| *t == typ) {
        Some(entry) if force => entry.1 = value,
        Some(_) => {}
        None => list.push((typ, value)),
    }
}

/// The `tokenizer.*` metadata of a GGUF file describing a Hugging Face byte-level BPE
/// tokenizer, as `convert_hf_to_gguf.py` writes it (`_set_vocab_gpt2` and
/// `SpecialVocab`): `tokenizer.ggml.model = "gpt2"`, `pre` (given, or chosen by
/// [`llama_cpp_pre_tokenizer`]), `tokens` (`config.vocab_size` entries; ids without a
/// token become `[PAD{id}]`, type unused), `token_type` (normal; added tokens control
/// when special or `<|...|>`-shaped, else user-defined), `merges` (`"a b"`, a space
/// inside a pair part written as `Ġ`), the `bos`/`eos`/`unk`/`sep`/`pad`/`cls`/`mask`
/// token ids (from `tokenizer_config.json`'s `*_token` entries matched against the
/// added tokens, then from `config`'s `bos_token_id` / `eos_token_id`),
/// `add_bos_token` / `add_eos_token` (from the post-processor: `ByteLevel` gives false,
/// a `TemplateProcessing` starting/ending with a special token gives true; else from
/// `tokenizer_config.json`) and `tokenizer.chat_template` when the config has one.
/// `tokenizer` is the same tokenizer loaded (it hashes the check text).
///
/// # Errors
/// [`LlamaIoError::Tokenizer`] for a `tokenizer.json` that is not JSON, a model other
/// than BPE or a BPE without a byte-level pre-tokenizer (naming its type), a token id
/// outside `config.vocab_size`, or an unknown pre-tokenizer hash.
pub fn gguf_tokenizer_metadata(
    tokenizer: &Tokenizer,
    tokenizer_json: &str,
    tokenizer_config: Option<&str>,
    config: &LlamaConfig,
    pre: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    use serde_json::Value as Json;
    let err = LlamaIoError::Tokenizer;
    let json: Json = serde_json::from_str(tokenizer_json)
        .map_err(|e| err(format!("tokenizer.json is not JSON: {e}")))?;
    let tokenizer_config: Option<Json> = match tokenizer_config {
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|e| err(format!("tokenizer_config.json is not JSON: {e}")))?,
        ),
        None => None,
    };
    let model = &json["model"];
    let model_type = model["type"].as_str().unwrap_or("(none)");
    if model_type != "BPE" {
        return Err(err(format!(
            "tokenizer model `{model_type}`: only byte-level BPE tokenizers can be written to GGUF"
        )));
    }
    let pre_tokenizer = &json["pre_tokenizer"];
    let byte_level = pre_tokenizer["type"] == "ByteLevel"
        || pre_tokenizer["pretokenizers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["type"] == "ByteLevel"));
    if !byte_level {
        let kind = pre_tokenizer["type"].as_str().unwrap_or("(none)");
        return Err(err(format!(
            "BPE tokenizer with pre-tokenizer `{kind}`: only byte-level BPE (GPT-2 style) \
             tokenizers can be written to GGUF"
        )));
    }
    let vocab_size = config.vocab_size;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err("tokenizer.json has no `model.vocab` object".into()))?;
    let mut place = |id: u64, token: &str, kind: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            err(format!(
                "token {token:?} has id {id}, outside the model's vocabulary of {vocab_size}"
            ))
        })?;
        *slot = Some((token.to_string(), kind));
        Ok(())
    };
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("vocabulary entry {token:?} has id {id}")))?;
        place(id, token, NORMAL)?;
    }
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    for token in &added {
        let (Some(id), Some(content)) = (token["id"].as_u64(), token["content"].as_str()) else {
            return Err(err(format!("malformed added token {token}")));
        };
        let looks_special = (content.starts_with("<|") && content.ends_with("|>"))
            || (content.starts_with("<\u{ff5c}") && content.ends_with("\u{ff5c}>"))
            || (content.starts_with("<unused") && content.ends_with('>'))
            || matches!(content, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]");
        let kind = if token["special"].as_bool().unwrap_or(false) || looks_special {
            CONTROL
        } else {
            USER_DEFINED
        };
        place(id, content, kind)?;
    }
    let (token_list, token_types): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| match t {
            Some((token, kind)) => (Value::String(token), Value::I32(kind)),
            None => (Value::String(format!("[PAD{id}]")), Value::I32(UNUSED)),
        })
        .unzip();

    let merges: Vec<Value> = match &model["merges"] {
        Json::Array(merges) => merges
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(Value::String(s.clone())),
                Json::Array(pair) if pair.len() == 2 => {
                    let part = |p: &Json| -> Result<String> {
                        p.as_str()
                            .map(|s| s.replace(' ', "\u{120}"))
                            .ok_or_else(|| err(format!("malformed merge {m}")))
                    };
                    Ok(Value::String(format!(
                        "{} {}",
                        part(&pair[0])?,
                        part(&pair[1])?
                    )))
                }
                other => Err(err(format!("malformed merge {other}"))),
            })
            .collect::<Result<_>>()?,
        _ => vec![],
    };

    let pre = match pre {
        Some(p) => p.to_string(),
        None => llama_cpp_pre_tokenizer(tokenizer)?.to_string(),
    };

    // Special token ids and add_* flags, in SpecialVocab's order.
    let tc = tokenizer_config.as_ref();
    let tc_token = |typ: &str| -> Option<String> {
        match tc.map(|c| &c[format!("{typ}_token")]) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        }
    };
    let mut add_special: Vec<(&'static str, bool)> = vec![];
    let post = &json["post_processor"];
    let processors: Vec<&Json> = match post["processors"].as_array() {
        Some(list) => list.iter().collect(),
        None if !post.is_null() => vec![post],
        None => vec![],
    };
    for processor in processors {
        match processor["type"].as_str() {
            Some("ByteLevel") => {
                set_flag(&mut add_special, "bos", false, false);
                set_flag(&mut add_special, "eos", false, false);
            }
            Some("TemplateProcessing") => {
                let single = processor["single"].as_array().cloned().unwrap_or_default();
                let special = |p: &Json| p["SpecialToken"]["id"].as_str().map(str::to_string);
                if single.len() > 1 {
                    if let Some(first) = special(&single[0]) {
                        let bos = tc_token("bos").or(tc_token("cls"));
                        let add = bos.is_none() || bos == Some(first);
                        set_flag(&mut add_special, "bos", add, true);
                    }
                    if let Some(last) = special(&single[single.len() - 1]) {
                        let eos = tc_token("eos");
                        let add = eos.is_none() || eos == Some(last);
                        set_flag(&mut add_special, "eos", add, true);
                    }
                }
            }
            _ => {}
        }
    }
    let mut special_ids: Vec<(&str, u32)> = vec![];
    for (typ, _) in SPECIAL_TYPES {
        if let Some(flag) = tc.and_then(|c| c[format!("add_{typ}_token")].as_bool()) {
            set_flag(&mut add_special, typ, flag, false);
        }
        if let Some(content) = tc_token(typ)
            && let Some(id) = added
                .iter()
                .find(|t| t["content"].as_str() == Some(content.as_str()))
                .and_then(|t| t["id"].as_u64())
            && (id as usize) < vocab_size
        {
            special_ids.push((typ, id as u32));
        }
    }
    for (typ, id) in [("bos", config.bos_token_id), ("eos", config.eos_token_id)] {
        if let Some(id) = id
            && (id as usize) < vocab_size
            && !special_ids.iter().any(|(t, _)| *t == typ)
        {
            special_ids.push((typ, id));
        }
    }

    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre)),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(token_list),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(token_types),
        ),
    ];
    if !merges.is_empty() {
        meta.push(("tokenizer.ggml.merges".to_string(), Value::Array(merges)));
    }
    for (typ, key) in SPECIAL_TYPES {
        if let Some(&(_, id)) = special_ids.iter().find(|(t, _)| *t == typ) {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    for (typ, flag) in add_special {
        if matches!(typ, "bos" | "eos" | "sep") {
            meta.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(flag)));
        }
    }
    if let Some(Json::String(template)) = tc.map(|c| &c["chat_template"]) {
        meta.push((
            "tokenizer.chat_template".to_string(),
            Value::String(template.clone()),
        ));
    }
    Ok(meta)
}
