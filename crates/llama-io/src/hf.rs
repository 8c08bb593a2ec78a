//! Hugging Face model directories: `config.json`, safetensors weights (one file or
//! shards listed in `model.safetensors.index.json`; f32, f16 or bf16,
//! memory-mapped), `tokenizer.json`; and the atomic writer of such a directory.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::model::{HostTensor, Model};

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// Storage type of the weights written by [`write_hf_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// IEEE single precision: the round trip is exact.
    F32,
    /// IEEE half precision (round to nearest even).
    F16,
    /// bfloat16 (round to nearest even).
    BF16,
}

impl WeightDtype {
    /// The `torch_dtype` string of `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::F16 => "float16",
            WeightDtype::BF16 => "bfloat16",
        }
    }

    fn safetensors_dtype(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::BF16 => Dtype::BF16,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LlamaIoError + '_ {
    move |source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a Hugging Face Llama checkpoint directory (see the module docs); the
/// tokenizer is loaded when `tokenizer.json` exists.
pub(crate) fn read_hf_dir(dir: &Path) -> Result<Model> {
    let config_path = dir.join(CONFIG);
    let text = fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    if let Some(q) = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("quantization_config").cloned())
    {
        return Err(LlamaIoError::unsupported(
            &config_path,
            format!(
                "a packed quantized checkpoint ({}): only float weights are read; \
                 load the fake-quant directory written beside it instead",
                q.get("quant_method")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown method")
            ),
        ));
    }
    let config = LlamaConfig::from_hf_json(&text, &config_path)?;

    let mut tensors = HashMap::new();
    let index_path = dir.join(WEIGHTS_INDEX);
    let single_path = dir.join(WEIGHTS);
    if index_path.exists() {
        for (shard, names) in read_index(&index_path)? {
            read_safetensors(&dir.join(&shard), Some(&names), &mut tensors)?;
        }
    } else {
        read_safetensors(&single_path, None, &mut tensors)?;
    }

    let tokenizer_path = dir.join(TOKENIZER);
    let tokenizer = if tokenizer_path.exists() {
        Some(crate::tokenizer::tokenizer_from_json(&tokenizer_path)?)
    } else {
        None
    };
    let source = if index_path.exists() {
        index_path
    } else {
        single_path
    };
    Model::from_hf_tensors(config, tensors, tokenizer, &source)
}

/// The shards of a sharded checkpoint and the tensor names each one holds.
fn read_index(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let format = |msg: String| LlamaIoError::format(path, msg);
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let index: Value = serde_json::from_str(&text).map_err(|e| format(format!("not JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format("no `weight_map` object".into()))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.contains('/') && !f.contains('\\') && *f != ".." && !f.is_empty())
            .ok_or_else(|| {
                format(format!(
                    "tensor `{name}` maps to {file}, expected a file name"
                ))
            })?;
        shards
            .entry(file.to_string())
            .or_default()
            .push(name.clone());
    }
    Ok(shards)
}

/// Reads the tensors of one safetensors file (all of them, or only `names`),
/// converted to f32, into `out`.
fn read_safetensors(
    path: &Path,
    names: Option<&[String]>,
    out: &mut HashMap<String, HostTensor>,
) -> Result<()> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    // SAFETY: the map is read-only and lives only inside this function; a file
    // modified by another process while we read it could give wrong values but
    // not undefined behaviour in safe code that only reads bytes.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(path))?;
    let tensors = SafeTensors::deserialize(&mmap).map_err(|e| LlamaIoError::Format {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file: {e}"),
    })?;
    let wanted: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => tensors.names().into_iter().map(str::to_string).collect(),
    };
    for name in wanted {
        let view = tensors
            .tensor(&name)
            .map_err(|_| LlamaIoError::MissingTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
            })?;
        let data =
            bytes_to_f32(view.dtype(), view.data()).ok_or_else(|| LlamaIoError::Unsupported {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{name}` has dtype {:?}; only F32, F16 and BF16 are supported",
                    view.dtype()
                ),
            })?;
        if out.contains_key(&name) {
            return Err(LlamaIoError::Format {
                path: path.to_path_buf(),
                msg: format!("tensor `{name}` appears twice"),
            });
        }
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(())
}

/// Little-endian f32 / f16 / bf16 bytes to f32; `None` for other dtypes.
fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// One f32 weight seen as a safetensors tensor of the output dtype; the bytes are
/// produced when the serializer asks for them, one tensor at a time.
struct OutputTensor<'a> {
    dtype: WeightDtype,
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for OutputTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors_dtype()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes: Vec<u8> = match self.dtype {
            WeightDtype::F32 => self.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            WeightDtype::F16 => self
                .data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            WeightDtype::BF16 => self
                .data
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.data.len() * self.dtype.safetensors_dtype().bitsize() / 8
    }
}

/// Values of a tensor written as they are (the parts of a packed quantized layer).
#[derive(Debug, Clone, PartialEq)]
pub enum PackedData {
    /// 32-bit integers (packed codes, zero points, group indices).
    I32(Vec<i32>),
    /// Values stored as f16 (each must be an f16 value to be stored exactly).
    F16(Vec<f32>),
}

/// One tensor of a packed linear layer, written as `{layer}.{suffix}` (for example
/// `model.layers.0.self_attn.q_proj.qweight`).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTensor {
    /// Name suffix after the layer's module name (`qweight`, `scales`, ...).
    pub suffix: &'static str,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Values.
    pub data: PackedData,
}

/// Linear layers stored in a packed form instead of a float `weight`, and the
/// `quantization_config` entry of `config.json` that tells loaders how to read them.
#[derive(Debug, Clone, Default)]
pub struct PackedLinears {
    /// The tensors replacing `weight`, per (block, layer).
    pub layers: BTreeMap<(usize, crate::LinearKind), Vec<PackedTensor>>,
    /// `config.json`'s `quantization_config`.
    pub quantization_config: Value,
}

/// A float weight or a packed part, as the serializer sees them.
enum AnyTensor<'a> {
    Float(OutputTensor<'a>),
    Packed(&'a PackedTensor),
}

impl View for AnyTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            AnyTensor::Float(t) => t.dtype(),
            AnyTensor::Packed(p) => match p.data {
                PackedData::I32(_) => Dtype::I32,
                PackedData::F16(_) => Dtype::F16,
            },
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            AnyTensor::Float(t) => t.shape(),
            AnyTensor::Packed(p) => &p.shape,
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            AnyTensor::Float(t) => t.data(),
            AnyTensor::Packed(p) => Cow::Owned(match &p.data {
                PackedData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PackedData::F16(v) => v
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
            }),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            AnyTensor::Float(t) => t.data_len(),
            AnyTensor::Packed(p) => match &p.data {
                PackedData::I32(v) => 4 * v.len(),
                PackedData::F16(v) => 2 * v.len(),
            },
        }
    }
}

/// Writes `model` as a Hugging Face directory `dir`: `config.json`,
/// `model.safetensors` (weights in `dtype`), and when the model has a tokenizer
/// `tokenizer.json` plus a `tokenizer_config.json` naming the fast tokenizer class.
///
/// The directory is first written under a temporary name beside `dir` and then
/// renamed, so `dir` never holds a partial model. An existing `dir` is an error
/// unless `overwrite` is true, in which case it is replaced as a whole.
pub fn write_hf_dir(model: &Model, dir: &Path, dtype: WeightDtype, overwrite: bool) -> Result<()> {
    write_dir(model, dir, dtype, overwrite, None)
}

/// [`write_hf_dir`] with the linear layers of `packed` stored as its tensors (every
/// other tensor in `dtype`) and its `quantization_config` in `config.json`.
///
/// # Errors
/// As [`write_hf_dir`]; a packed layer outside the model.
pub fn write_packed_hf_dir(
    model: &Model,
    dir: &Path,
    dtype: WeightDtype,
    overwrite: bool,
    packed: &PackedLinears,
) -> Result<()> {
    if let Some(&(block, kind)) = packed.layers.keys().find(|(b, _)| *b >= model.num_blocks()) {
        return Err(LlamaIoError::InvalidArgument(format!(
            "packed layer {} is outside the {}-block model",
            kind.hf_name(block),
            model.num_blocks()
        )));
    }
    write_dir(model, dir, dtype, overwrite, Some(packed))
}

fn write_dir(
    model: &Model,
    dir: &Path,
    dtype: WeightDtype,
    overwrite: bool,
    packed: Option<&PackedLinears>,
) -> Result<()> {
    if dir.exists() && !overwrite {
        return Err(LlamaIoError::InvalidArgument(format!(
            "output directory {} exists (pass overwrite to replace it)",
            dir.display()
        )));
    }
    let temp = sibling(dir, "tmp")?;
    let written = write_dir_contents(model, &temp, dtype, packed);
    let result = written.and_then(|()| replace_dir(&temp, dir));
    if result.is_err() {
        // Best effort: the temporary directory is ours and holds nothing else.
        let _ = fs::remove_dir_all(&temp);
    }
    result
}

fn write_dir_contents(
    model: &Model,
    dir: &Path,
    dtype: WeightDtype,
    packed: Option<&PackedLinears>,
) -> Result<()> {
    fs::create_dir(dir).map_err(io_error(dir))?;
    let config_path = dir.join(CONFIG);
    let mut config = model.config().to_hf_json(dtype.torch_name());
    if let (Some(packed), Value::Object(map)) = (packed, &mut config) {
        map.insert(
            "quantization_config".into(),
            packed.quantization_config.clone(),
        );
    }
    write_json(&config_path, &config)?;

    let weights_path = dir.join(WEIGHTS);
    let mut tensors = Vec::new();
    for role in crate::TensorRole::all(model.config()) {
        let layer = match role {
            crate::TensorRole::Linear(block, kind) => packed.and_then(|p| {
                p.layers
                    .get(&(block, kind))
                    .map(|t| (kind.hf_name(block), t))
            }),
            _ => None,
        };
        match layer {
            Some((name, parts)) => {
                let module = name.trim_end_matches(".weight");
                for part in parts {
                    tensors.push((format!("{module}.{}", part.suffix), AnyTensor::Packed(part)));
                }
            }
            None => tensors.push((
                role.hf_name(),
                AnyTensor::Float(OutputTensor {
                    dtype,
                    shape: role.shape(model.config()),
                    data: model.tensor(role)?,
                }),
            )),
        }
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), &weights_path).map_err(|e| {
        LlamaIoError::Format {
            path: weights_path.clone(),
            msg: format!("could not write safetensors: {e}"),
        }
    })?;
    // The safetensors writer creates its file owner-only (0600); a model directory is
    // as readable as the other files written here.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&weights_path, std::fs::Permissions::from_mode(0o644)).map_err(
            |source| LlamaIoError::Io {
                path: weights_path.clone(),
                source,
            },
        )?;
    }

    if let Some(tokenizer) = &model.tokenizer {
        let tokenizer_path = dir.join(TOKENIZER);
        tokenizer
            .save(&tokenizer_path, false)
            .map_err(|e| LlamaIoError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        let tokenizer_config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.config().max_position_embeddings,
        });
        write_json(&dir.join(TOKENIZER_CONFIG), &tokenizer_config)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| LlamaIoError::Format {
        path: path.to_path_buf(),
        msg: format!("could not serialise JSON: {e}"),
    })?;
    fs::write(path, text + "\n").map_err(io_error(path))
}

/// A fresh path `.{name}.{tag}-{pid}-{n}` beside `dir`.
fn sibling(dir: &Path, tag: &str) -> Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| {
        LlamaIoError::InvalidArgument(format!(
            "output path {} has no final component",
            dir.display()
        ))
    })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pid = std::process::id();
    (0..u32::MAX)
        .map(|n| parent.join(format!(".{}.{tag}-{pid}-{n}", name.to_string_lossy())))
        .find(|p| !p.exists())
        .ok_or_else(|| {
            LlamaIoError::InvalidArgument(format!(
                "no free temporary name beside {}",
                dir.display()
            ))
        })
}

/// Moves the finished `temp` to `dir`, replacing an existing `dir` as a whole.
fn replace_dir(temp: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return fs::rename(temp, dir).map_err(io_error(dir));
    }
    let old = sibling(dir, "old")?;
    fs::rename(dir, &old).map_err(io_error(dir))?;
    if let Err(source) = fs::rename(temp, dir) {
        // Put the previous model back so nothing is lost.
        let _ = fs::rename(&old, dir);
        return Err(LlamaIoError::Io {
            path: dir.to_path_buf(),
            source,
        });
    }
    fs::remove_dir_all(&old).map_err(io_error(&old))
}
