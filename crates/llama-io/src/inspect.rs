//! What a model file holds, read from its headers only: the configuration, metadata and
//! every tensor's name, dtype, shape and size (`magr inspect`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as GgufValue;
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::{LlamaIoError, Result};

/// One tensor of a model file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSummary {
    /// Name in the file.
    pub name: String,
    /// Storage type as the file names it (`F16`, `I32`, `Q4_1`, ...).
    pub dtype: String,
    /// Shape (safetensors order: outermost first; GGUF order: as stored, innermost first).
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub bytes: u64,
}

/// The inventory of a model: where it is, its format, configuration / metadata entries
/// (`key`, value as text) and tensors (sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The path inspected.
    pub path: PathBuf,
    /// `"Hugging Face directory"` or `"GGUF"`.
    pub format: &'static str,
    /// `config.json` entries, or GGUF metadata (arrays summarised by their length).
    pub metadata: BTreeMap<String, String>,
    /// Every tensor.
    pub tensors: Vec<TensorSummary>,
}

/// Reads the headers of a Hugging Face directory (`config.json` and each safetensors
/// file's header) or of a GGUF file.
///
/// # Errors
/// A missing or unreadable file, a header that does not parse or does not describe
/// the file (safetensors: see `safetensors_header`; also a truncated file), each
/// naming the file.
pub fn inspect(path: &Path) -> Result<Inventory> {
    if path.is_dir() {
        inspect_hf_dir(path)
    } else {
        inspect_gguf(path)
    }
}

/// A closure turning an [`std::io::Error`] into [`LlamaIoError::Io`] about `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LlamaIoError + '_ {
    move |source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// [`inspect`] of a Hugging Face directory.
fn inspect_hf_dir(dir: &Path) -> Result<Inventory> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| LlamaIoError::format(&config_path, format!("not JSON: {e}")))?;
    let metadata = config
        .as_object()
        .ok_or_else(|| LlamaIoError::format(&config_path, "not a JSON object".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LlamaIoError::format(
            dir,
            "no .safetensors file in this directory".into(),
        ));
    }
    let mut tensors = Vec::new();
    for file in files {
        tensors.extend(safetensors_header(&file)?);
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Inventory {
        path: dir.to_path_buf(),
        format: "Hugging Face directory",
        metadata,
        tensors,
    })
}

/// The tensors listed in a safetensors header, read and checked by the `safetensors`
/// crate ([`SafeTensors::read_metadata`]: the 8-byte length within bounds and at most
/// 100 MB, the header UTF-8 JSON with a known dtype, shape and `data_offsets` per
/// tensor, the offsets contiguous from 0 and each tensor's size equal to its dtype
/// times its shape, the data ending exactly at the end of the file). The file is
/// memory-mapped, so only the pages of the header are read.
fn safetensors_header(path: &Path) -> Result<Vec<TensorSummary>> {
    let file = File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len();
    if file_len < 8 {
        return Err(LlamaIoError::format(
            path,
            "shorter than a safetensors header".into(),
        ));
    }
    // SAFETY: the map is read-only and lives only inside this function; a file
    // modified by another process while we read it could give wrong values but not
    // undefined behaviour in safe code that only reads bytes.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
    let (_, metadata) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| LlamaIoError::format(path, format!("not a valid safetensors header: {e}")))?;
    Ok(metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorSummary {
            name,
            dtype: info.dtype.to_string(),
            shape: info.shape.clone(),
            bytes: (info.data_offsets.1 - info.data_offsets.0) as u64,
        })
        .collect())
}

/// [`inspect`] of a GGUF file.
fn inspect_gguf(path: &Path) -> Result<Inventory> {
    let (content, _) = crate::gguf_header::read_content(path)?;
    let metadata = content
        .metadata
        .iter()
        .map(|(k, v)| {
            let text = match v {
                GgufValue::Array(a) => format!("[array of {}]", a.len()),
                GgufValue::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            (k.clone(), text)
        })
        .collect();
    let mut tensors: Vec<TensorSummary> = content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let elems = info.shape.elem_count();
            let dtype = info.ggml_dtype;
            TensorSummary {
                name: name.clone(),
                dtype: crate::gguf_header::ggml_type_name(dtype).to_string(),
                shape: info.shape.dims().to_vec(),
                bytes: (elems / dtype.block_size() * dtype.type_size()) as u64,
            }
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Inventory {
        path: path.to_path_buf(),
        format: "GGUF",
        metadata,
        tensors,
    })
}
