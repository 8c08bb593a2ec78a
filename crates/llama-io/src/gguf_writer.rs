//! The GGUF writer: a [`Model`] as a llama.cpp GGUF v3 file, with linear layers either
//! given already encoded by the caller ([`EncodedLinear`]: a GGML type and the bytes
//! of its rows) or written in a float type, like every other tensor.
//!
//! llama-io knows nothing of quantization: it checks that each encoded tensor has the
//! byte length its type and shape imply, moves its rows for llama.cpp's RoPE layout
//! and writes the bytes as given.
//!
//! **Layout.** Metadata: `general.architecture = "llama"`, `general.name`,
//! `general.file_type` (when given), `general.quantization_version = 2` (when a tensor
//! has a block type), the `llama.*` hyper-parameters (see [`llama_metadata`]), then
//! the tokenizer's `tokenizer.*` keys. Tensors in [`TensorRole::all`] order under
//! their llama.cpp names, each at a 32-byte aligned offset. The rows of `attn_q` and
//! `attn_k` are permuted from the Hugging Face order to llama.cpp's
//! ([`crate::gguf::permute_qk`]; for encoded rows [`crate::gguf::permute_qk_rows`],
//! a row being the `in / block_size` blocks of one output channel).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::gguf::{ggml_type_id, ggml_type_name, permute_qk, permute_qk_rows};
use crate::hf::{WeightDtype, float_bytes};
use crate::linear::LinearKind;
use crate::model::Model;
use crate::names::TensorRole;
use crate::stored::StoredTensor;
use crate::tokenizer::{TokenizerSource, gguf_tokenizer_metadata};

/// GGUF alignment of tensor data (llama.cpp's default; `general.alignment` is not
/// written).
const ALIGNMENT: usize = 32;

/// The float type of the tensors the caller does not give encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GgufFloat {
    /// Each tensor in the type it had in the input file when that was F32, F16 or
    /// BF16; F32 otherwise (a quantized input tensor, a model built in memory).
    #[default]
    AsSource,
    /// IEEE single precision (exact).
    F32,
    /// IEEE half precision (round to nearest even; a value beyond its range is an error).
    F16,
    /// bfloat16 (round to nearest even).
    BF16,
}

/// Options of [`write_gguf`].
#[derive(Debug, Clone, Default)]
pub struct GgufOptions {
    /// `general.name`; the file stem of the output when `None`.
    pub name: Option<String>,
    /// `general.file_type`: llama.cpp's `llama_ftype` number (e.g. 0 = all F32,
    /// 1 = mostly F16, 2 = mostly Q4_0, 7 = mostly Q8_0), written when given.
    pub file_type: Option<u32>,
    /// Float type of every tensor not given in [`GgufLinears`]. One-dimensional
    /// tensors (the RMSNorm gains) are always F32, as llama.cpp's converter writes them.
    pub float: GgufFloat,
    /// `tokenizer.ggml.pre` for a Hugging Face tokenizer, instead of llama.cpp's
    /// hash rule ([`crate::tokenizer::llama_cpp_pre_tokenizer`]); ignored for a GGUF
    /// input, whose `tokenizer.*` keys are copied as they were.
    pub tokenizer_pre: Option<String>,
}

/// One linear layer already encoded in a GGML type.
#[derive(Debug, Clone)]
pub struct EncodedLinear {
    /// The GGML type of the bytes (`Q4_0`, `Q8_0`, `Q4_K`, ..., or a float type).
    pub dtype: GgmlDType,
    /// The rows of the weight in the model's Hugging Face order (`out` rows of
    /// `in / block_size` blocks, `type_size` bytes each), as GGML stores them.
    pub data: EncodedBytes,
}

/// The bytes of an [`EncodedLinear`]: in memory, or a tensor of a safetensors file
/// (read when written, so that a large model's layers need not be in memory).
#[derive(Debug, Clone)]
pub enum EncodedBytes {
    /// In memory.
    Memory(Vec<u8>),
    /// The bytes of this tensor, as its file stores them.
    Stored(StoredTensor),
}

impl EncodedBytes {
    /// Their number.
    pub fn len(&self) -> usize {
        match self {
            EncodedBytes::Memory(v) => v.len(),
            EncodedBytes::Stored(t) => t.byte_len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes (read from the file when stored).
    ///
    /// # Errors
    /// A failed read, naming the file.
    pub fn read(&self) -> Result<Cow<'_, [u8]>> {
        match self {
            EncodedBytes::Memory(v) => Ok(Cow::Borrowed(v)),
            EncodedBytes::Stored(t) => Ok(Cow::Owned(t.read_bytes()?)),
        }
    }
}

impl From<Vec<u8>> for EncodedBytes {
    fn from(v: Vec<u8>) -> Self {
        EncodedBytes::Memory(v)
    }
}

/// Linear layers given encoded, by (block, kind); every other linear layer is written
/// in the [`GgufOptions::float`] type.
pub type GgufLinears = BTreeMap<(usize, LinearKind), EncodedLinear>;

/// Where the bytes of one tensor come from.
enum Payload<'a> {
    /// The model's tensor playing this role, written as `dtype` (F32, F16 or BF16);
    /// read from the model (a stored weight from its file) when it is written.
    Float(TensorRole),
    /// Bytes written as given.
    Encoded(&'a EncodedBytes),
}

/// One tensor of the file, checked.
struct Planned<'a> {
    name: String,
    /// Shape outermost first (PyTorch order); written innermost first.
    shape: Vec<usize>,
    dtype: GgmlDType,
    payload: Payload<'a>,
    /// Heads whose rows are permuted for llama.cpp's RoPE (Q and K).
    permute_heads: Option<usize>,
    bytes: usize,
}

/// Writes `model` as a llama.cpp GGUF v3 file at `path` (module docs), atomically:
/// the file is written under a temporary sibling name and renamed
/// ([`atomic_fs::write_with`]); an existing file is replaced. Every tensor is checked
/// before anything is written.
///
/// # Errors
/// ([`LlamaIoError::InvalidArgument`], naming the tensor) an encoded linear layer of a
/// block the model does not have, whose input width is not a multiple of its type's
/// block size, or whose byte length differs from what its type and shape imply; a
/// float tensor beyond the F16 range when F16 is asked for. ([`LlamaIoError::Tokenizer`])
/// a tokenizer that cannot be described in GGUF (not byte-level BPE, unknown
/// pre-tokenizer hash: see [`crate::tokenizer::gguf_tokenizer_metadata`]). A failed
/// write, naming the path. On error no file and no temporary sibling is left.
pub fn write_gguf(
    model: &Model,
    path: &Path,
    options: &GgufOptions,
    linears: &GgufLinears,
) -> Result<()> {
    let config = model.config();
    let plan = plan_tensors(model, options, linears)?;
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String(options.name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })),
        ),
    ];
    if let Some(file_type) = options.file_type {
        metadata.push(("general.file_type".into(), Value::U32(file_type)));
    }
    if plan.iter().any(|t| t.dtype.block_size() > 1) {
        metadata.push(("general.quantization_version".into(), Value::U32(2)));
    }
    metadata.extend(llama_metadata(config));
    metadata.extend(tokenizer_metadata(model, options)?);
    let header = build_header(&metadata, &plan)
        .map_err(|e| LlamaIoError::InvalidArgument(format!("GGUF metadata: {e}")))?;
    atomic_fs::write_with(path, |temp| {
        let file = File::create(temp).map_err(|source| LlamaIoError::Io {
            path: temp.to_path_buf(),
            source,
        })?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_file(&mut w, &header, &plan, model)
            .and_then(|()| w.flush())
            .map_err(|source| LlamaIoError::Io {
                path: path.to_path_buf(),
                source,
            })
    })
}

/// Checks, before any work, what [`write_gguf`] needs of `model` besides the encoded
/// linear layers: that its tokenizer converts to GGUF metadata with `options`.
///
/// # Errors
/// As [`write_gguf`]'s tokenizer errors (an unsupported tokenizer, named).
pub fn check_gguf(model: &Model, options: &GgufOptions) -> Result<()> {
    tokenizer_metadata(model, options).map(|_| ())
}

/// The `llama.*` hyper-parameters as llama.cpp reads them (and as its converter
/// writes them: u32 sizes, f32 floats): `block_count`, `context_length`,
/// `embedding_length`, `feed_forward_length`, `attention.head_count`,
/// `attention.head_count_kv`, `rope.freq_base`, `attention.layer_norm_rms_epsilon`,
/// `rope.dimension_count`, `vocab_size`, and `attention.key_length` /
/// `attention.value_length` when the head dimension is not `hidden / heads`.
pub fn llama_metadata(config: &LlamaConfig) -> Vec<(String, Value)> {
    let u = |n: usize| Value::U32(n as u32);
    let mut meta = vec![
        ("llama.block_count", u(config.num_hidden_layers)),
        ("llama.context_length", u(config.max_position_embeddings)),
        ("llama.embedding_length", u(config.hidden_size)),
        ("llama.feed_forward_length", u(config.intermediate_size)),
        ("llama.attention.head_count", u(config.num_attention_heads)),
        (
            "llama.attention.head_count_kv",
            u(config.num_key_value_heads),
        ),
        ("llama.rope.freq_base", Value::F32(config.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(config.rms_norm_eps as f32),
        ),
        ("llama.rope.dimension_count", u(config.head_dim)),
        ("llama.vocab_size", u(config.vocab_size)),
    ];
    if config.head_dim * config.num_attention_heads != config.hidden_size {
        meta.push(("llama.attention.key_length", u(config.head_dim)));
        meta.push(("llama.attention.value_length", u(config.head_dim)));
    }
    meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The `tokenizer.*` keys: copied from a GGUF input, converted from a Hugging Face
/// tokenizer, none without a tokenizer.
fn tokenizer_metadata(model: &Model, options: &GgufOptions) -> Result<Vec<(String, Value)>> {
    let pre = options.tokenizer_pre.as_deref();
    match (&model.tokenizer_source, &model.tokenizer) {
        (Some(TokenizerSource::Gguf(keys)), _) => Ok(keys.clone()),
        (
            Some(TokenizerSource::HuggingFace {
                tokenizer_json,
                tokenizer_config,
            }),
            Some(tokenizer),
        ) => gguf_tokenizer_metadata(
            tokenizer,
            tokenizer_json,
            tokenizer_config.as_deref(),
            model.config(),
            pre,
        ),
        (_, Some(tokenizer)) => {
            let json = tokenizer
                .to_string(false)
                .map_err(|e| LlamaIoError::Tokenizer(format!("serialising the tokenizer: {e}")))?;
            gguf_tokenizer_metadata(tokenizer, &json, None, model.config(), pre)
        }
        (_, None) => Ok(vec![]),
    }
}

/// Every tensor of the file with its type and byte length, checked.
fn plan_tensors<'a>(
    model: &'a Model,
    options: &GgufOptions,
    linears: &'a GgufLinears,
) -> Result<Vec<Planned<'a>>> {
    let config = model.config();
    let invalid = |msg: String| Err(LlamaIoError::InvalidArgument(msg));
    if let Some(&(block, kind)) = linears.keys().find(|(b, _)| *b >= model.num_blocks()) {
        return invalid(format!(
            "encoded tensor `{}` (`{}`): block {block} out of range (the model has {} blocks)",
            kind.gguf_name(block),
            kind.hf_name(block),
            model.num_blocks()
        ));
    }
    let mut plan = Vec::new();
    for role in TensorRole::all(config) {
        let name = role.gguf_name();
        let shape = role.shape(config);
        let permute_heads = match role {
            TensorRole::Linear(_, LinearKind::Q) => Some(config.num_attention_heads),
            TensorRole::Linear(_, LinearKind::K) => Some(config.num_key_value_heads),
            _ => None,
        };
        let encoded = match role {
            TensorRole::Linear(b, kind) => linears.get(&(b, kind)),
            _ => None,
        };
        let planned = if let Some(encoded) = encoded {
            let (rows, cols) = (shape[0], shape[1]);
            let dtype = encoded.dtype;
            let block = dtype.block_size();
            let type_name = ggml_type_name(dtype);
            if !cols.is_multiple_of(block) {
                return invalid(format!(
                    "encoded tensor `{name}` ({}): input width {cols} is not a multiple of \
                     the {block}-value blocks of {type_name}",
                    role.hf_name()
                ));
            }
            let bytes = rows * (cols / block) * dtype.type_size();
            if encoded.data.len() != bytes {
                return invalid(format!(
                    "encoded tensor `{name}` ({}): {} bytes, but {rows} x {cols} in {type_name} \
                     takes {bytes}",
                    role.hf_name(),
                    encoded.data.len()
                ));
            }
            Planned {
                name,
                shape,
                dtype,
                payload: Payload::Encoded(&encoded.data),
                permute_heads,
                bytes,
            }
        } else {
            let data = model.tensor(role)?;
            let dtype = if shape.len() == 1 {
                GgmlDType::F32
            } else {
                match options.float {
                    GgufFloat::F32 => GgmlDType::F32,
                    GgufFloat::F16 => GgmlDType::F16,
                    GgufFloat::BF16 => GgmlDType::BF16,
                    GgufFloat::AsSource => match model.source_dtype(role) {
                        Some(d @ (GgmlDType::F16 | GgmlDType::BF16)) => d,
                        _ => GgmlDType::F32,
                    },
                }
            };
            if dtype == GgmlDType::F16
                && let Some(x) = data.iter().find(|x| x.abs() > f32::from(half::f16::MAX))
            {
                return invalid(format!(
                    "tensor `{name}` ({}): value {x} is beyond the F16 range",
                    role.hf_name()
                ));
            }
            Planned {
                name,
                bytes: data.len() * dtype.type_size(),
                shape,
                dtype,
                payload: Payload::Float(role),
                permute_heads,
            }
        };
        plan.push(planned);
    }
    Ok(plan)
}

/// Bytes to the next multiple of [`ALIGNMENT`].
fn padding(pos: usize) -> usize {
    (ALIGNMENT - pos % ALIGNMENT) % ALIGNMENT
}

/// The header, metadata and tensor infos, padded to the alignment.
fn build_header(metadata: &[(String, Value)], plan: &[Planned<'_>]) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::new();
    header.extend_from_slice(&0x4655_4747u32.to_le_bytes()); // "GGUF"
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(plan.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        header.extend_from_slice(&value_type(value)?.to_le_bytes());
        put_value(&mut header, value)?;
    }
    let mut offset = 0usize;
    for tensor in plan {
        put_string(&mut header, &tensor.name);
        header.extend_from_slice(&(tensor.shape.len() as u32).to_le_bytes());
        for &d in tensor.shape.iter().rev() {
            header.extend_from_slice(&(d as u64).to_le_bytes());
        }
        header.extend_from_slice(&ggml_type_id(tensor.dtype).to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += tensor.bytes + padding(tensor.bytes);
    }
    header.resize(header.len() + padding(header.len()), 0);
    Ok(header)
}

/// Writes the whole file: `header` (from [`build_header`]), then the aligned data.
fn write_file<W: Write>(
    w: &mut W,
    header: &[u8],
    plan: &[Planned<'_>],
    model: &Model,
) -> std::io::Result<()> {
    w.write_all(header)?;
    for tensor in plan {
        let bytes = tensor_bytes(tensor, model)?;
        debug_assert_eq!(bytes.len(), tensor.bytes);
        w.write_all(&bytes)?;
        w.write_all(&[0u8; ALIGNMENT][..padding(bytes.len())])?;
    }
    Ok(())
}

/// The bytes of one tensor, rows in llama.cpp's order.
fn tensor_bytes(tensor: &Planned<'_>, model: &Model) -> std::io::Result<Vec<u8>> {
    let rows = tensor.shape[0];
    let io_error = |e: LlamaIoError| std::io::Error::other(e.to_string());
    match tensor.payload {
        Payload::Encoded(data) => {
            let data = data.read().map_err(io_error)?;
            match tensor.permute_heads {
                Some(heads) => {
                    permute_qk_rows(&data, rows, data.len() / rows, heads).map_err(io_error)
                }
                None => Ok(data.into_owned()),
            }
        }
        Payload::Float(role) => {
            let data = model.tensor(role).map_err(io_error)?;
            let data = &data[..];
            let permuted;
            let values = match tensor.permute_heads {
                Some(heads) => {
                    permuted =
                        permute_qk(data, rows, data.len() / rows, heads).map_err(io_error)?;
                    &permuted[..]
                }
                None => data,
            };
            let dtype = match tensor.dtype {
                GgmlDType::F16 => WeightDtype::F16,
                GgmlDType::BF16 => WeightDtype::BF16,
                _ => WeightDtype::F32,
            };
            Ok(float_bytes(values, dtype))
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF value type id of `value` (`gguf_type` of `gguf.h`).
fn value_type(value: &Value) -> std::io::Result<u32> {
    Ok(match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    })
}

/// Appends `value` (without its type id) in GGUF v3 encoding.
fn put_value(out: &mut Vec<u8>, value: &Value) -> std::io::Result<()> {
    match value {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type does not matter; candle's writer uses u32.
            let elem = items.first().map_or(Ok(4), value_type)?;
            for item in items {
                if value_type(item)? != elem {
                    return Err(std::io::Error::other(
                        "a GGUF array holds values of different types",
                    ));
                }
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}
