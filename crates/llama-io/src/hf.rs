//! Hugging Face model directories: `config.json`, safetensors weights (one file or
//! shards listed in `model.safetensors.index.json`; f32, f16 or bf16; linear weights
//! left in the files, see [`crate::stored`]), `tokenizer.json`; and the atomic writer of such a directory, with
//! whatever a caller adds to it ([`DirExtras`]: tensors written as given, model
//! tensors left out, `config.json` entries) without knowing what they mean.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use safetensors::{Dtype, View};
use serde_json::{Map, Value};

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::model::{Model, SourceTensor};
use crate::names::TensorRole;
use crate::stored::{Encoding, StoredTensor, bytes_to_f32};
use crate::tokenizer::TokenizerSource;

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

    /// The safetensors dtype of this storage type.
    fn safetensors_dtype(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::BF16 => Dtype::BF16,
        }
    }
}

/// A closure turning an [`std::io::Error`] into [`LlamaIoError::Io`] about `path`.
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
    let mut dtypes = HashMap::new();
    let index_path = dir.join(WEIGHTS_INDEX);
    let single_path = dir.join(WEIGHTS);
    if index_path.exists() {
        for (shard, names) in read_index(&index_path)? {
            read_safetensors(&dir.join(&shard), Some(&names), &mut tensors, &mut dtypes)?;
        }
    } else {
        read_safetensors(&single_path, None, &mut tensors, &mut dtypes)?;
    }

    let tokenizer_path = dir.join(TOKENIZER);
    let (tokenizer, tokenizer_source) = if tokenizer_path.exists() {
        let tokenizer = crate::tokenizer::tokenizer_from_json(&tokenizer_path)?;
        let tokenizer_json =
            fs::read_to_string(&tokenizer_path).map_err(io_error(&tokenizer_path))?;
        let config_path = dir.join(TOKENIZER_CONFIG);
        let tokenizer_config = if config_path.exists() {
            Some(fs::read_to_string(&config_path).map_err(io_error(&config_path))?)
        } else {
            None
        };
        let source = TokenizerSource::HuggingFace {
            tokenizer_json,
            tokenizer_config,
        };
        (Some(tokenizer), Some(source))
    } else {
        (None, None)
    };
    let source = if index_path.exists() {
        index_path
    } else {
        single_path
    };
    let mut model = Model::from_hf_sources(config, tensors, tokenizer, &source)?;
    dtypes.retain(|name, _| {
        TensorRole::all(model.config())
            .iter()
            .any(|r| r.hf_name() == *name)
    });
    model.source_dtypes = dtypes;
    model.tokenizer_source = tokenizer_source;
    Ok(model)
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

/// The tensors of one safetensors file (all of them, or only `names`), left in the
/// file, into `out`, and their storage types into `dtypes`.
fn read_safetensors(
    path: &Path,
    names: Option<&[String]>,
    out: &mut HashMap<String, SourceTensor>,
    dtypes: &mut HashMap<String, GgmlDType>,
) -> Result<()> {
    let mut tensors = crate::stored::stored_tensors(path)?;
    let wanted: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => tensors.keys().cloned().collect(),
    };
    for name in wanted {
        let tensor = tensors
            .remove(&name)
            .ok_or_else(|| LlamaIoError::MissingTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
            })?;
        if out.contains_key(&name) {
            return Err(LlamaIoError::Format {
                path: path.to_path_buf(),
                msg: format!("tensor `{name}` appears twice"),
            });
        }
        let dtype = match tensor.encoding() {
            Encoding::Safetensors(Dtype::F16) => GgmlDType::F16,
            Encoding::Safetensors(Dtype::BF16) => GgmlDType::BF16,
            _ => GgmlDType::F32,
        };
        dtypes.insert(name.clone(), dtype);
        out.insert(name, SourceTensor::Stored(tensor));
    }
    Ok(())
}

/// Little-endian bytes of `values` stored as `dtype` (f16 and bf16 round to nearest even).
pub(crate) fn float_bytes(values: &[f32], dtype: WeightDtype) -> Vec<u8> {
    match dtype {
        WeightDtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        WeightDtype::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        WeightDtype::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

/// One model tensor seen as a safetensors tensor of the output dtype; its values are
/// read (a stored weight from its file) and converted when the serializer asks for
/// them, one tensor at a time, so a model is never whole in memory while written.
struct FloatTensor<'a> {
    dtype: WeightDtype,
    shape: Vec<usize>,
    model: &'a Model,
    role: TensorRole,
    /// The first read error: [`View::data`] cannot fail, so the writer reports it
    /// after the serializer returns (and the directory being built is dropped).
    error: &'a RefCell<Option<LlamaIoError>>,
}

impl View for FloatTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors_dtype()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.model.tensor(self.role) {
            Ok(values) => Cow::Owned(float_bytes(&values, self.dtype)),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                Cow::Owned(Vec::new())
            }
        }
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.safetensors_dtype().bitsize() / 8
    }
}

/// Values of a tensor written as they are.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 32-bit integers, stored as `I32`.
    I32(Vec<i32>),
    /// Values stored as `F16` (round to nearest even: each value must be an f16 value
    /// to be stored exactly).
    F16(Vec<f32>),
    /// Values stored as `F32`.
    F32(Vec<f32>),
    /// Bytes stored as `U8` (an encoded block format, for instance).
    U8(Vec<u8>),
}

impl TensorData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorData::I32(v) => v.len(),
            TensorData::F16(v) | TensorData::F32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor written under its own name, as given.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The full tensor name in the safetensors file.
    pub name: String,
    /// Shape, outermost first (row-major); its product is the number of values.
    pub shape: Vec<usize>,
    /// Values.
    pub data: TensorData,
}

impl NamedTensor {
    /// The tensor `name` of a safetensors file, read back from its `view`.
    ///
    /// # Errors
    /// A dtype other than U8, I32, F16 and F32, or a data length that does not match.
    pub fn from_view(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Self> {
        let bytes = view.data();
        let words = |n: usize| bytes.chunks_exact(n);
        let data = match view.dtype() {
            Dtype::U8 => TensorData::U8(bytes.to_vec()),
            Dtype::I32 => TensorData::I32(
                words(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F16 => {
                TensorData::F16(bytes_to_f32(Dtype::F16, bytes).expect("F16 converts to f32"))
            }
            Dtype::F32 => {
                TensorData::F32(bytes_to_f32(Dtype::F32, bytes).expect("F32 converts to f32"))
            }
            other => {
                return Err(LlamaIoError::InvalidArgument(format!(
                    "tensor `{name}` has dtype {other:?}; only U8, I32, F16 and F32 are read as named tensors"
                )));
            }
        };
        if data.len() != view.shape().iter().product::<usize>() {
            return Err(LlamaIoError::InvalidArgument(format!(
                "tensor `{name}`: {} values for shape {:?}",
                data.len(),
                view.shape()
            )));
        }
        Ok(NamedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        })
    }
}

impl NamedTensor {
    /// A tensor of a safetensors file left there ([`StoredTensor`]), read whole, under
    /// the name it has in its file.
    ///
    /// # Errors
    /// A failed read; a GGUF tensor or a dtype other than U8, I32, F16 and F32, naming
    /// the file and the tensor.
    pub fn read(stored: &StoredTensor) -> Result<Self> {
        let Encoding::Safetensors(dtype) = stored.encoding() else {
            return Err(LlamaIoError::unsupported(
                stored.path(),
                format!("tensor `{}` is a GGUF tensor", stored.name()),
            ));
        };
        let bytes = stored.read_bytes()?;
        let view = safetensors::tensor::TensorView::new(dtype, stored.shape().to_vec(), &bytes)
            .map_err(|e| {
                LlamaIoError::format(stored.path(), format!("`{}`: {e}", stored.name()))
            })?;
        NamedTensor::from_view(stored.name(), &view)
            .map_err(|e| LlamaIoError::format(stored.path(), e.to_string()))
    }
}

impl TensorData {
    /// The safetensors dtype the values are stored as.
    pub fn dtype(&self) -> Dtype {
        match self {
            TensorData::I32(_) => Dtype::I32,
            TensorData::F16(_) => Dtype::F16,
            TensorData::F32(_) => Dtype::F32,
            TensorData::U8(_) => Dtype::U8,
        }
    }

    /// The little-endian bytes stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F16(v) => float_bytes(v, WeightDtype::F16),
            TensorData::F32(v) => float_bytes(v, WeightDtype::F32),
            TensorData::U8(v) => v.clone(),
        }
    }
}

impl View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        self.data.dtype()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.to_bytes())
    }

    fn data_len(&self) -> usize {
        self.data.len() * self.dtype().bitsize() / 8
    }
}

/// Makes the values of an [`ExtraTensor::Made`] when the writer reaches it; its error
/// is reported as [`LlamaIoError::Extra`].
pub type MakeTensor<'a> =
    Box<dyn Fn() -> std::result::Result<TensorData, Box<dyn std::error::Error + Send + Sync>> + 'a>;

/// A tensor written beside a model's: its values given, or made when the writer
/// reaches it, one tensor at a time, so that the extras of a large model (its packed
/// layers, say) are never all in memory.
pub enum ExtraTensor<'a> {
    /// Values given.
    Given(NamedTensor),
    /// Values made when written; they must be of `dtype` and fill `shape`.
    Made {
        /// The full tensor name in the safetensors file.
        name: String,
        /// Shape, outermost first.
        shape: Vec<usize>,
        /// U8, I32, F16 or F32 ([`TensorData`]'s dtypes).
        dtype: Dtype,
        /// The values.
        make: MakeTensor<'a>,
    },
}

impl ExtraTensor<'_> {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        match self {
            ExtraTensor::Given(t) => &t.name,
            ExtraTensor::Made { name, .. } => name,
        }
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            ExtraTensor::Given(t) => &t.shape,
            ExtraTensor::Made { shape, .. } => shape,
        }
    }

    /// The dtype it is stored as.
    pub fn dtype(&self) -> Dtype {
        match self {
            ExtraTensor::Given(t) => t.data.dtype(),
            ExtraTensor::Made { dtype, .. } => *dtype,
        }
    }
}

impl From<NamedTensor> for ExtraTensor<'_> {
    fn from(t: NamedTensor) -> Self {
        ExtraTensor::Given(t)
    }
}

impl std::fmt::Debug for ExtraTensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraTensor")
            .field("name", &self.name())
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .field("made", &matches!(self, ExtraTensor::Made { .. }))
            .finish()
    }
}

/// What a writer adds to / leaves out of a model's Hugging Face directory.
#[derive(Debug, Default)]
pub struct DirExtras<'a> {
    /// Hugging Face names of model tensors not written (e.g. a linear weight that
    /// `tensors` replaces).
    pub omitted: BTreeSet<String>,
    /// Tensors written beside the model's.
    pub tensors: Vec<ExtraTensor<'a>>,
    /// Entries added to `config.json` (e.g. `quantization_config`).
    pub config: Map<String, Value>,
}

/// An extra tensor as the serializer sees it: its values made when asked for; a made
/// tensor's error (or wrong dtype or length) goes to `error`, as [`FloatTensor`]'s.
struct ExtraView<'a> {
    tensor: &'a ExtraTensor<'a>,
    error: &'a RefCell<Option<LlamaIoError>>,
}

impl ExtraView<'_> {
    fn data_len(&self) -> usize {
        self.tensor.shape().iter().product::<usize>() * self.tensor.dtype().bitsize() / 8
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.tensor {
            ExtraTensor::Given(t) => Cow::Owned(t.data.to_bytes()),
            ExtraTensor::Made {
                name,
                shape,
                dtype,
                make,
            } => {
                let made = make()
                    .map_err(|source| LlamaIoError::Extra {
                        name: name.clone(),
                        source,
                    })
                    .and_then(|data| {
                    let values = shape.iter().product::<usize>();
                    if data.dtype() != *dtype || data.len() != values {
                        return Err(LlamaIoError::InvalidArgument(format!(
                            "extra tensor `{name}` was made as {} {:?} values, but it is                              declared {values} {dtype:?} values (shape {shape:?})",
                            data.len(),
                            data.dtype(),
                        )));
                    }
                    Ok(data.to_bytes())
                });
                match made {
                    Ok(bytes) => Cow::Owned(bytes),
                    Err(e) => {
                        self.error.borrow_mut().get_or_insert(e);
                        // The serializer writes what it is given; the directory being
                        // built is dropped when the error is reported.
                        Cow::Owned(vec![0; self.data_len()])
                    }
                }
            }
        }
    }
}

/// A model weight or an extra tensor, as the serializer sees them.
enum OutputTensor<'a> {
    Float(FloatTensor<'a>),
    Extra(ExtraView<'a>),
}

impl View for OutputTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            OutputTensor::Float(t) => t.dtype(),
            OutputTensor::Extra(t) => t.tensor.dtype(),
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            OutputTensor::Float(t) => t.shape(),
            OutputTensor::Extra(t) => t.tensor.shape(),
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            OutputTensor::Float(t) => t.data(),
            OutputTensor::Extra(t) => t.data(),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            OutputTensor::Float(t) => t.data_len(),
            OutputTensor::Extra(t) => t.data_len(),
        }
    }
}

/// Writes `model` as a Hugging Face directory `dir`: `config.json`,
/// `model.safetensors` (weights in `dtype`), and when the model has a tokenizer
/// `tokenizer.json` with `tokenizer_config.json` (special tokens, chat template),
/// `special_tokens_map.json` and `generation_config.json` carried over from the input
/// (see the `hf_tokenizer` module).
///
/// The directory is built under a temporary name beside `dir` and then renamed
/// ([`atomic_fs::write_dir`]), so `dir` never holds a partial model. An existing `dir`
/// is an error unless `overwrite` is true, in which case it is replaced as a whole.
///
/// # Errors
/// An existing `dir` without `overwrite` ([`LlamaIoError::Io`], kind
/// `AlreadyExists`), a failed write, each naming the path.
pub fn write_hf_dir(model: &Model, dir: &Path, dtype: WeightDtype, overwrite: bool) -> Result<()> {
    write_hf_dir_with(model, dir, dtype, overwrite, &DirExtras::default())
}

/// [`write_hf_dir`] with `extras`: the model tensors named in `extras.omitted` are
/// left out, `extras.tensors` are written as given beside the model's (every model
/// tensor still in `dtype`), and `extras.config` entries are added to `config.json`.
/// Nothing is written when `extras` is invalid.
///
/// # Errors
/// As [`write_hf_dir`]; and ([`LlamaIoError::InvalidArgument`], naming the tensor or
/// key) an omitted name that is not a model tensor, an extra tensor whose name
/// collides with a written model tensor or another extra (or is empty or
/// `__metadata__`), a shape whose product differs from the data length, a config key
/// the model's config already has.
pub fn write_hf_dir_with(
    model: &Model,
    dir: &Path,
    dtype: WeightDtype,
    overwrite: bool,
    extras: &DirExtras<'_>,
) -> Result<()> {
    write_hf_dir_sharded(model, dir, dtype, overwrite, extras, MAX_SHARD_BYTES)
}

/// Above this many bytes of tensors a Hugging Face directory's weights are split into
/// shards (transformers' default `max_shard_size`, 5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// [`write_hf_dir_with`] with weights of more than `max_shard_bytes` in shards
/// `model-0000k-of-0000n.safetensors` listed in `model.safetensors.index.json`, as
/// transformers writes them: the embedding, then whole decoder blocks (each with its
/// extras, by the `model.layers.N.` of their names), then the final norm and the head,
/// each shard filled up to `max_shard_bytes` (a block larger than that is a shard of
/// its own). Up to `max_shard_bytes` it is one `model.safetensors`.
///
/// # Errors
/// As [`write_hf_dir_with`].
pub fn write_hf_dir_sharded(
    model: &Model,
    dir: &Path,
    dtype: WeightDtype,
    overwrite: bool,
    extras: &DirExtras<'_>,
    max_shard_bytes: usize,
) -> Result<()> {
    let mut config = model.config().to_hf_json(dtype.torch_name());
    let read_error = RefCell::new(None);
    let tensors = output_tensors(model, dtype, extras, &read_error)?;
    let Value::Object(map) = &mut config else {
        unreachable!("a config serialises to a JSON object")
    };
    for (key, value) in &extras.config {
        if map.contains_key(key) {
            return Err(LlamaIoError::InvalidArgument(format!(
                "extra config.json entry `{key}`: the model's config already has it"
            )));
        }
        map.insert(key.clone(), value.clone());
    }
    let blocks = model.num_blocks();
    let tensors = (tensors.into_iter())
        .map(|(name, t)| {
            let group = shard_group(&name, blocks);
            (name, t, group)
        })
        .collect();
    atomic_fs::write_dir(dir, overwrite, |temp| {
        write_dir_contents(
            model,
            temp,
            &config,
            (tensors, max_shard_bytes),
            &read_error,
        )
    })
}

/// The group of a tensor named `name` for sharding ([`write_hf_dir_sharded`]): 0 for
/// the embedding, `N + 1` for anything under `model.layers.N.`, `blocks + 1` for the
/// rest.
fn shard_group(name: &str, blocks: usize) -> usize {
    if name.starts_with("model.embed_tokens.") {
        return 0;
    }
    (name.strip_prefix("model.layers."))
        .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .filter(|&b| b < blocks)
        .map_or(blocks + 1, |b| b + 1)
}

/// Writes `tensors` (each with its group) into the directory `dir` as
/// `model.safetensors` when they take at most `max_shard_bytes`, else as shards of
/// whole groups in group order, consecutive groups sharing a shard up to
/// `max_shard_bytes`, with `model.safetensors.index.json`; `progress(done, shards)`
/// after each file.
pub(crate) fn write_weights<V: View>(
    dir: &Path,
    mut tensors: Vec<(String, V, usize)>,
    max_shard_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let total: usize = tensors.iter().map(|(_, t, _)| t.data_len()).sum();
    if total <= max_shard_bytes {
        let views = tensors.into_iter().map(|(name, t, _)| (name, t));
        write_safetensors(views, &dir.join(WEIGHTS))?;
        progress(1, 1);
        return Ok(());
    }
    tensors.sort_by_key(|(_, _, group)| *group);
    let mut group_bytes: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, t, group) in &tensors {
        *group_bytes.entry(*group).or_default() += t.data_len();
    }
    let mut shards: Vec<Vec<(String, V)>> = Vec::new();
    let (mut size, mut last_group) = (0usize, None);
    for (name, t, group) in tensors {
        if last_group != Some(group) {
            // A group starts a new shard when the shard so far and it would not fit.
            let bytes = group_bytes[&group];
            if shards.is_empty() || (size > 0 && size + bytes > max_shard_bytes) {
                shards.push(Vec::new());
                size = 0;
            }
            size += bytes;
            last_group = Some(group);
        }
        shards
            .last_mut()
            .expect("a shard was started")
            .push((name, t));
    }
    let count = shards.len();
    let file_name = |shard: usize| format!("model-{:05}-of-{count:05}.safetensors", shard + 1);
    let weight_map: Map<String, Value> = (shards.iter().enumerate())
        .flat_map(|(k, shard)| {
            let file = Value::String(file_name(k));
            shard
                .iter()
                .map(move |(name, _)| (name.clone(), file.clone()))
        })
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json(&dir.join(WEIGHTS_INDEX), &index)?;
    for (k, shard) in shards.into_iter().enumerate() {
        write_safetensors(shard, &dir.join(file_name(k)))?;
        progress(k + 1, count);
    }
    Ok(())
}

/// The tensors of the safetensors file: the model's (in `dtype`) but the omitted ones,
/// and the extras; checked as [`write_hf_dir_with`] says.
fn output_tensors<'a>(
    model: &'a Model,
    dtype: WeightDtype,
    extras: &'a DirExtras<'a>,
    read_error: &'a RefCell<Option<LlamaIoError>>,
) -> Result<Vec<(String, OutputTensor<'a>)>> {
    let roles = TensorRole::all(model.config());
    let model_names: BTreeSet<String> = roles.iter().map(|r| r.hf_name()).collect();
    if let Some(name) = extras.omitted.iter().find(|n| !model_names.contains(*n)) {
        return Err(LlamaIoError::InvalidArgument(format!(
            "omitted tensor `{name}` is not a tensor of the model"
        )));
    }
    let mut tensors = Vec::with_capacity(roles.len() + extras.tensors.len());
    let mut names = BTreeSet::new();
    for role in roles {
        let name = role.hf_name();
        if extras.omitted.contains(&name) {
            continue;
        }
        names.insert(name.clone());
        let tensor = FloatTensor {
            dtype,
            shape: role.shape(model.config()),
            model,
            role,
            error: read_error,
        };
        tensors.push((name, OutputTensor::Float(tensor)));
    }
    for extra in &extras.tensors {
        let name = &extra.name().to_string();
        if name.is_empty() || name == "__metadata__" {
            return Err(LlamaIoError::InvalidArgument(format!(
                "extra tensor name `{name}` is reserved in safetensors"
            )));
        }
        if !names.insert(name.clone()) {
            let what = if model_names.contains(name) {
                "a written model tensor"
            } else {
                "another extra tensor"
            };
            return Err(LlamaIoError::InvalidArgument(format!(
                "extra tensor `{name}` has the name of {what}"
            )));
        }
        let elements = extra
            .shape()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d));
        match extra {
            ExtraTensor::Given(t) if elements != Some(t.data.len()) => {
                return Err(LlamaIoError::InvalidArgument(format!(
                    "extra tensor `{name}` has shape {:?} but {} values",
                    t.shape,
                    t.data.len()
                )));
            }
            ExtraTensor::Made { dtype, .. }
                if elements.is_none()
                    || ![Dtype::U8, Dtype::I32, Dtype::F16, Dtype::F32].contains(dtype) =>
            {
                return Err(LlamaIoError::InvalidArgument(format!(
                    "extra tensor `{name}`: shape {:?} of dtype {dtype:?} cannot be written \
                     (U8, I32, F16 or F32)",
                    extra.shape()
                )));
            }
            _ => {}
        }
        let view = ExtraView {
            tensor: extra,
            error: read_error,
        };
        tensors.push((name.clone(), OutputTensor::Extra(view)));
    }
    Ok(tensors)
}

/// Writes the files of the directory into `dir` (an empty directory).
fn write_dir_contents(
    model: &Model,
    dir: &Path,
    config: &Value,
    (tensors, max_shard_bytes): (Vec<(String, OutputTensor<'_>, usize)>, usize),
    read_error: &RefCell<Option<LlamaIoError>>,
) -> Result<()> {
    write_json(&dir.join(CONFIG), config)?;

    write_weights(dir, tensors, max_shard_bytes, &mut |_, _| {})?;
    if let Some(e) = read_error.take() {
        return Err(e);
    }

    if let Some(tokenizer) = &model.tokenizer {
        let tokenizer_path = dir.join(TOKENIZER);
        tokenizer
            .save(&tokenizer_path, false)
            .map_err(|e| LlamaIoError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        for (name, value) in crate::hf_tokenizer::tokenizer_files(model)? {
            write_json(&dir.join(name), &value)?;
        }
    }
    Ok(())
}

/// Writes the safetensors file `path` of a model directory (metadata `format: pt`, as
/// `transformers` writes it), readable by all like the directory's other files.
pub(crate) fn write_safetensors<S: AsRef<str> + Ord + std::fmt::Display, V: View>(
    tensors: impl IntoIterator<Item = (S, V)>,
    path: &Path,
) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), path)
        .map_err(|e| LlamaIoError::format(path, format!("could not write safetensors: {e}")))?;
    // The safetensors writer creates its file owner-only (0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(io_error(path))?;
    }
    Ok(())
}

/// Writes `value` as pretty-printed JSON and a final newline (inside the directory
/// being built, so not atomic on its own).
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| LlamaIoError::Format {
        path: path.to_path_buf(),
        msg: format!("could not serialise JSON: {e}"),
    })?;
    fs::write(path, text + "\n").map_err(io_error(path))
}
