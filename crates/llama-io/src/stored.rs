//! [`StoredTensor`]: a float tensor left in its safetensors file, in its stored dtype,
//! and turned into f32 each time it is asked for. This is how a model larger than the
//! memory is held: only the block being worked on is ever in f32.
//!
//! Uses [`crate::error`] only.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use crate::error::{LlamaIoError, Result};

/// A float tensor (F32, F16 or BF16) inside an open safetensors file. The file stays
/// open, so the tensor can be read after the file was renamed or removed.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    file: Arc<File>,
    path: Arc<PathBuf>,
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    /// Byte offset of the first value in the file.
    offset: u64,
}

impl StoredTensor {
    /// Shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The safetensors dtype the values are stored in.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor's name in its file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the values and converts them to f32 (exact for every stored dtype).
    ///
    /// # Errors
    /// A failed read ([`LlamaIoError::Io`]), a dtype other than F32, F16 and BF16
    /// ([`LlamaIoError::Unsupported`]) or a non-finite value
    /// ([`LlamaIoError::Format`]), naming the file and the tensor.
    pub fn read(&self) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; self.len() * self.dtype.bitsize() / 8];
        self.file
            .read_exact_at(&mut bytes, self.offset)
            .map_err(|source| LlamaIoError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        let values = bytes_to_f32(self.dtype, &bytes).ok_or_else(|| {
            LlamaIoError::unsupported(
                &self.path,
                format!(
                    "tensor `{}` has dtype {:?}; only F32, F16 and BF16 are supported",
                    self.name, self.dtype
                ),
            )
        })?;
        if values.iter().all(|x| x.is_finite()) {
            Ok(values)
        } else {
            Err(LlamaIoError::format(
                &self.path,
                format!(
                    "tensor `{}` contains non-finite values (NaN or infinity)",
                    self.name
                ),
            ))
        }
    }
}

/// Every tensor of the safetensors file `path` as a [`StoredTensor`], by name, from
/// the header only (a tensor of a non-float dtype is an error when read).
///
/// # Errors
/// An unreadable file or a malformed header, naming the file.
pub fn stored_tensors(path: &Path) -> Result<HashMap<String, StoredTensor>> {
    let io_error = |source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    // SAFETY: the map is read-only and only its header pages are read, inside this
    // function; another process changing the file could give a wrong header (caught
    // as an error) but no undefined behaviour in code that only reads bytes.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| LlamaIoError::format(path, format!("not a valid safetensors file: {e}")))?;
    drop(mmap);
    let file = Arc::new(file);
    let path = Arc::new(path.to_path_buf());
    let data_start = 8 + header_len as u64;
    let mut out = HashMap::new();
    for (name, info) in metadata.tensors() {
        out.insert(
            name.clone(),
            StoredTensor {
                file: Arc::clone(&file),
                path: Arc::clone(&path),
                name,
                shape: info.shape.clone(),
                dtype: info.dtype,
                offset: data_start + info.data_offsets.0 as u64,
            },
        );
    }
    Ok(out)
}

/// Little-endian f32 / f16 / bf16 bytes to f32; `None` for other dtypes.
pub(crate) fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
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
