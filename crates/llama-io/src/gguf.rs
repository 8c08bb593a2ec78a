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
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};

use crate::config::LlamaConfig;
use crate::error::{CandleMessage, LlamaIoError, Result};
use crate::linear::LinearKind;
use crate::model::{HostTensor, Model, unexpected_tensor};
use crate::names::TensorRole;
use crate::tokenizer::TokenizerSource;

/// Tensor types this reader dequantizes: those candle 0.11 reads from a GGUF file
/// (its `Q8_1` and `Q8K` are intermediate types of matrix products, which candle does
/// not read from files; llama.cpp does not store weights in them either).
pub const READABLE_TYPES: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// llama.cpp's name of a GGML type (`Q4_K`, not candle's `Q4K`).
pub fn ggml_type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// The numeric id of a GGML type in a GGUF tensor header (`ggml_type` of `ggml.h`).
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// llama.cpp's name of a GGML type id that candle does not know (`ggml.h`).
fn unknown_type_name(id: u32) -> &'static str {
    match id {
        4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// Hugging Face row order from GGUF row order for a `rows x cols` row-major Q or K
/// weight with `n_heads` heads (see the module docs).
pub fn unpermute_qk(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Result<Vec<f32>> {
    reorder_qk(data, rows, cols, n_heads, true)
}

/// GGUF row order from Hugging Face row order: the inverse of [`unpermute_qk`].
pub fn permute_qk(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Result<Vec<f32>> {
    reorder_qk(data, rows, cols, n_heads, false)
}

/// GGUF row order from Hugging Face row order for encoded rows: `data` holds `rows`
/// rows of `row_bytes` bytes each (for a block type, one row is the
/// `in / block_size` blocks of one output channel), moved whole as
/// [`permute_qk`] moves f32 rows.
pub fn permute_qk_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    n_heads: usize,
) -> Result<Vec<u8>> {
    reorder_qk(data, rows, row_bytes, n_heads, false)
}

/// Hugging Face row order from GGUF row order for encoded rows: the inverse of
/// [`permute_qk_rows`].
pub fn unpermute_qk_rows(
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    n_heads: usize,
) -> Result<Vec<u8>> {
    reorder_qk(data, rows, row_bytes, n_heads, true)
}

fn reorder_qk<T: Copy + Default>(
    data: &[T],
    rows: usize,
    cols: usize,
    n_heads: usize,
    to_hf: bool,
) -> Result<Vec<T>> {
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(LlamaIoError::InvalidArgument(format!(
            "{rows} rows cannot be split into {n_heads} heads of even width"
        )));
    }
    if data.len() != rows * cols {
        return Err(LlamaIoError::InvalidArgument(format!(
            "{} values for a {rows} x {cols} weight",
            data.len()
        )));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![T::default(); data.len()];
    for head in 0..n_heads {
        for s in 0..2 {
            for j in 0..half {
                let hf_row = head * head_dim + s * half + j;
                let gguf_row = head * head_dim + 2 * j + s;
                let (dst, src) = if to_hf {
                    (hf_row, gguf_row)
                } else {
                    (gguf_row, hf_row)
                };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// Reads a llama GGUF file into a [`Model`] (module docs).
pub(crate) fn read_gguf(path: &Path) -> Result<Model> {
    let format = |msg: String| LlamaIoError::format(path, msg);
    let file = File::open(path).map_err(|source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = match Content::read(&mut reader) {
        Ok(content) => content,
        Err(e) => {
            // candle refuses a whole file for one tensor type it does not know; name it.
            if let Some((name, id)) = first_unknown_type(path) {
                return Err(LlamaIoError::unsupported(
                    path,
                    format!(
                        "tensor `{name}` has GGML type {id} ({}), which candle cannot read; \
                         readable: {}",
                        unknown_type_name(id),
                        readable_list()
                    ),
                ));
            }
            return Err(format(format!(
                "not a valid GGUF file: {}",
                CandleMessage(&e)
            )));
        }
    };
    if content.magic == VersionedMagic::GgufV1 {
        return Err(LlamaIoError::Unsupported {
            path: path.to_path_buf(),
            msg: "GGUF version 1 (only versions 2 and 3 are supported)".into(),
        });
    }
    let config = config_from_gguf(&content, path)?;
    let file_size = reader
        .seek(SeekFrom::End(0))
        .map_err(|source| LlamaIoError::Io {
            path: path.to_path_buf(),
            source,
        })?;

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
    check_tensor_table(&content, path, file_size)?;

    let mut tensors = HashMap::with_capacity(gguf_names.len());
    let mut source_dtypes = HashMap::with_capacity(gguf_names.len());
    for gguf_name in gguf_names {
        let info = &content.tensor_infos[gguf_name];
        let role = roles[gguf_name];
        source_dtypes.insert(role.hf_name(), info.ggml_dtype);
        let data = content
            .tensor(&mut reader, gguf_name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| format(format!("tensor `{gguf_name}`: {}", CandleMessage(&e))))?;
        let shape = info.shape.dims().to_vec();
        let data = match role {
            // A wrong shape is left alone here and reported by the model builder.
            TensorRole::Linear(_, LinearKind::Q | LinearKind::K)
                if shape == role.shape(&config) =>
            {
                let heads = if matches!(role, TensorRole::Linear(_, LinearKind::Q)) {
                    config.num_attention_heads
                } else {
                    config.num_key_value_heads
                };
                unpermute_qk(&data, shape[0], shape[1], heads)?
            }
            _ => data,
        };
        tensors.insert(gguf_name.clone(), HostTensor { shape, data });
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

/// Checks that the tensor table of a GGUF file describes the file: each tensor a whole
/// number of its type's blocks, its bytes inside the file (`file_size` bytes) and shared
/// with no other tensor.
///
/// # Errors
/// [`LlamaIoError::Format`] naming the first tensor that breaks a rule.
pub(crate) fn check_tensor_table(content: &Content, path: &Path, file_size: u64) -> Result<()> {
    let format = |msg: String| LlamaIoError::format(path, msg);
    let mut extents = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(format(format!(
                "tensor `{name}` has {elems} values, not a multiple of the {block}-value blocks of {}",
                ggml_type_name(info.ggml_dtype)
            )));
        }
        let bytes = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
        let start = content.tensor_data_offset.saturating_add(info.offset);
        extents.push((start, start.saturating_add(bytes), name));
    }
    extents.sort();
    if let Some((start, end, name)) = extents.iter().find(|(_, end, _)| *end > file_size) {
        return Err(format(format!(
            "truncated: tensor `{name}` needs bytes {start}..{end} but the file has {file_size}"
        )));
    }
    if let Some(pair) = extents.windows(2).find(|pair| pair[0].1 > pair[1].0) {
        return Err(format(format!(
            "tensors `{}` and `{}` overlap (bytes {}..{} and {}..{})",
            pair[0].2, pair[1].2, pair[0].0, pair[0].1, pair[1].0, pair[1].1
        )));
    }
    Ok(())
}

/// `F32, F16, ...`: the names of [`READABLE_TYPES`].
fn readable_list() -> String {
    READABLE_TYPES.map(ggml_type_name).join(", ")
}

/// The first tensor (name, type id) of a GGUF file whose type id candle does not know,
/// found by walking the header; `None` when there is none or the header does not parse.
fn first_unknown_type(path: &Path) -> Option<(String, u32)> {
    use std::io::Read;
    let mut r = BufReader::new(File::open(path).ok()?);
    let u32_ = |r: &mut BufReader<File>| -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    };
    let u64_ = |r: &mut BufReader<File>| -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    };
    if u32_(&mut r)? != 0x4655_4747 {
        return None;
    }
    if !matches!(u32_(&mut r)?, 2 | 3) {
        return None;
    }
    let n_tensors = u64_(&mut r)?;
    let n_kv = u64_(&mut r)?;
    let string = |r: &mut BufReader<File>| -> Option<String> {
        let len = u64_(r)?;
        let mut bytes = Vec::new();
        r.by_ref().take(len).read_to_end(&mut bytes).ok()?;
        (bytes.len() as u64 == len).then(|| String::from_utf8_lossy(&bytes).into_owned())
    };
    // Skips one value of type `t` (GGUF value type ids).
    fn skip(r: &mut BufReader<File>, t: u32, depth: usize) -> Option<()> {
        let mut b = [0u8; 8];
        let width = match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                r.read_exact(&mut b).ok()?;
                let len = u64::from_le_bytes(b);
                r.seek_relative(i64::try_from(len).ok()?).ok()?;
                return Some(());
            }
            9 if depth < 8 => {
                let mut tb = [0u8; 4];
                r.read_exact(&mut tb).ok()?;
                r.read_exact(&mut b).ok()?;
                let (elem, len) = (u32::from_le_bytes(tb), u64::from_le_bytes(b));
                for _ in 0..len {
                    skip(r, elem, depth + 1)?;
                }
                return Some(());
            }
            _ => return None,
        };
        r.read_exact(&mut b[..width]).ok()
    }
    for _ in 0..n_kv {
        string(&mut r)?;
        let t = u32_(&mut r)?;
        skip(&mut r, t, 0)?;
    }
    for _ in 0..n_tensors {
        let name = string(&mut r)?;
        let n_dims = u32_(&mut r)?;
        for _ in 0..n_dims.min(8) {
            u64_(&mut r)?;
        }
        let id = u32_(&mut r)?;
        u64_(&mut r)?;
        if !READABLE_TYPES
            .iter()
            .chain(&[GgmlDType::Q8_1, GgmlDType::Q8K])
            .any(|&d| ggml_type_id(d) == id)
        {
            return Some((name, id));
        }
    }
    None
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
