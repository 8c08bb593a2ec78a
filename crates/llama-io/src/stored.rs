//! [`StoredTensor`]: a tensor left in its file (safetensors F32/F16/BF16, or any GGML
//! type of a GGUF file) in its stored encoding, and turned into f32 each time it is
//! asked for. This is how a model larger than the memory is held: only the block being
//! worked on is ever in f32.
//!
//! Uses `error`, `qk_order`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use safetensors::{Dtype, SafeTensors};

use crate::error::{CandleMessage, LlamaIoError, Result};
use crate::qk_order::unpermute_qk;

/// How a [`StoredTensor`]'s bytes encode its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A safetensors dtype (read as floats: F32, F16, BF16).
    Safetensors(Dtype),
    /// A GGML type of a GGUF file (any type candle dequantizes).
    Ggml(GgmlDType),
}

/// A tensor inside an open file. The file stays open, so the tensor can be read after
/// the file was renamed or removed.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    file: Arc<File>,
    path: Arc<PathBuf>,
    name: String,
    /// Shape, outermost first (PyTorch order).
    shape: Vec<usize>,
    encoding: Encoding,
    /// Byte offset of the first value in the file.
    offset: u64,
    /// Heads of a GGUF Q or K weight, whose rows are in llama.cpp's RoPE order and are
    /// put back into the Hugging Face order when read.
    qk_heads: Option<usize>,
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

    /// How the values are stored.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor's name in its file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A tensor of the GGUF file `path` (open as `file`): `shape` in PyTorch order,
    /// values of type `dtype` from byte `offset`; `qk_heads` for a Q or K weight whose
    /// rows are put back into the Hugging Face order when read. Nothing is read here.
    pub(crate) fn ggml(
        (file, path): (Arc<File>, Arc<PathBuf>),
        name: &str,
        shape: Vec<usize>,
        dtype: GgmlDType,
        offset: u64,
        qk_heads: Option<usize>,
    ) -> Self {
        StoredTensor {
            file,
            path,
            name: name.to_string(),
            shape,
            encoding: Encoding::Ggml(dtype),
            offset,
            qk_heads,
        }
    }

    /// Reads the values and converts them to f32 (exact for the float dtypes; GGML
    /// block types by candle's dequantization, llama.cpp's formulas).
    ///
    /// # Errors
    /// A failed read ([`LlamaIoError::Io`]), a safetensors dtype other than F32, F16 and
    /// BF16 ([`LlamaIoError::Unsupported`]), blocks candle cannot decode or a
    /// non-finite value ([`LlamaIoError::Format`]), naming the file and the tensor.
    pub fn read(&self) -> Result<Vec<f32>> {
        let unsupported = |msg: String| LlamaIoError::unsupported(&self.path, msg);
        let format = |msg: String| LlamaIoError::format(&self.path, msg);
        let values = match self.encoding {
            Encoding::Safetensors(dtype) => {
                let bytes = self.read_bytes()?;
                bytes_to_f32(dtype, &bytes).ok_or_else(|| {
                    unsupported(format!(
                        "tensor `{}` has dtype {dtype:?}; only F32, F16 and BF16 are supported",
                        self.name
                    ))
                })?
            }
            Encoding::Ggml(dtype) => {
                let bytes = self.read_bytes()?;
                let values = qtensor_from_ggml(dtype, &bytes, self.shape.clone(), &Device::Cpu)
                    .and_then(|q| q.dequantize(&Device::Cpu))
                    .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                    .map_err(|e| {
                        format(format!("tensor `{}`: {}", self.name, CandleMessage(&e)))
                    })?;
                match self.qk_heads {
                    Some(heads) => unpermute_qk(&values, self.shape[0], self.shape[1], heads)?,
                    None => values,
                }
            }
        };
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

impl StoredTensor {
    /// The number of bytes the tensor takes in its file.
    pub fn byte_len(&self) -> usize {
        match self.encoding {
            Encoding::Safetensors(dtype) => self.len() * dtype.bitsize() / 8,
            Encoding::Ggml(dtype) => self.len() / dtype.block_size() * dtype.type_size(),
        }
    }

    /// The tensor's bytes as its file stores them (any dtype; a GGUF Q or K weight in
    /// llama.cpp's row order).
    ///
    /// # Errors
    /// A failed read, naming the file.
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        self.bytes(self.byte_len())
    }

    /// `len` bytes from the tensor's offset.
    fn bytes(&self, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, self.offset)
            .map_err(|source| LlamaIoError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(bytes)
    }
}

/// Every tensor of the safetensors file `path` as a [`StoredTensor`], by name, from
/// the header only (a tensor of a non-float dtype is an error when read).
///
/// # Errors
/// An unreadable file or a malformed header, naming the file.
pub fn stored_tensors(path: &Path) -> Result<HashMap<String, StoredTensor>> {
    Ok(stored_tensors_and_metadata(path)?.0)
}

/// [`stored_tensors`], and the file's text metadata (`__metadata__`).
///
/// # Errors
/// As [`stored_tensors`].
pub fn stored_tensors_and_metadata(
    path: &Path,
) -> Result<(HashMap<String, StoredTensor>, HashMap<String, String>)> {
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
                encoding: Encoding::Safetensors(info.dtype),
                offset: data_start + info.data_offsets.0 as u64,
                qk_heads: None,
            },
        );
    }
    Ok((out, metadata.metadata().clone().unwrap_or_default()))
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
