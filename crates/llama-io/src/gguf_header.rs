//! The GGML type tables, and the reading of a GGUF header that no bytes can turn into an
//! allocation beyond the file, an endless recursion or an unnamed refusal: a walk over
//! the header before candle parses it, then a check of the tensor table.
//!
//! candle's reader trusts the header: it allocates a string's declared length and a
//! tensor's declared dimension count at once, and reads nested arrays recursively. This
//! walk checks, against the file's size: every string and array fits in the bytes left,
//! the entry counts could be stored in them, arrays nest at most [`MAX_DEPTH`] deep,
//! tensors have 1 to [`MAX_DIMS`] dimensions whose product does not overflow, value types
//! are GGUF's, and tensor types are ones candle reads (else the first such tensor is
//! named).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;

use crate::error::{CandleMessage, LlamaIoError, Result};

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

/// `F32, F16, ...`: the names of [`READABLE_TYPES`].
pub(crate) fn readable_list() -> String {
    READABLE_TYPES.map(ggml_type_name).join(", ")
}

/// Deepest nesting of arrays accepted (llama.cpp writes none deeper than 1).
const MAX_DEPTH: usize = 4;
/// `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

/// A reader that knows how many bytes are left in the file.
struct Walker {
    reader: BufReader<File>,
    left: u64,
}

impl Walker {
    fn bytes<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| format!("the file ends inside {what}"))?;
        self.left -= N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> std::result::Result<(), String> {
        if n > self.left {
            return Err(format!(
                "{what} declares {n} bytes but only {} are left in the file",
                self.left
            ));
        }
        self.reader
            .seek_relative(n as i64)
            .map_err(|e| format!("{what}: {e}"))?;
        self.left -= n;
        Ok(())
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        if len > self.left {
            return Err(format!(
                "{what} declares a string of {len} bytes but only {} are left in the file",
                self.left
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.reader
            .read_exact(&mut bytes)
            .map_err(|_| format!("the file ends inside {what}"))?;
        self.left -= len;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Skips one metadata value of GGUF value type `t`.
    fn value(&mut self, t: u32, depth: usize, what: &str) -> std::result::Result<(), String> {
        match t {
            8 => {
                let len = self.u64(what)?;
                self.skip(len, what)
            }
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what} nests arrays deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                let least = min_width(elem).ok_or_else(|| unknown_value_type(elem, what))?;
                if count.saturating_mul(least) > self.left {
                    return Err(format!(
                        "{what} declares {count} array elements, more than the {} bytes left \
                         in the file can hold",
                        self.left
                    ));
                }
                match elem {
                    8 | 9 => (0..count).try_for_each(|_| self.value(elem, depth + 1, what)),
                    _ => self.skip(count * least, what),
                }
            }
            t => {
                let width = min_width(t).ok_or_else(|| unknown_value_type(t, what))?;
                self.skip(width, what)
            }
        }
    }
}

/// The bytes a value of GGUF value type `t` takes at least (exactly, for scalars).
fn min_width(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,
        9 => 12,
        _ => return None,
    })
}

fn unknown_value_type(t: u32, what: &str) -> String {
    format!("{what} has the unknown value type {t}")
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

/// Walks the header of the GGUF file at `path` (module docs).
///
/// # Errors
/// [`LlamaIoError::Format`] for a header that breaks a rule, naming the entry;
/// [`LlamaIoError::Unsupported`] for GGUF version 1 and for a tensor type candle does not
/// read, naming the tensor.
fn check_header(path: &Path) -> Result<()> {
    let format = |msg: String| LlamaIoError::format(path, msg);
    let file = File::open(path).map_err(|source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let left = file
        .metadata()
        .map_err(|source| LlamaIoError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut w = Walker {
        reader: BufReader::new(file),
        left,
    };
    if w.bytes::<4>("the magic").map_err(format)? != *b"GGUF" {
        return Err(format(
            "not a GGUF file (it does not start with `GGUF`)".into(),
        ));
    }
    match w.u32("the version").map_err(format)? {
        2 | 3 => {}
        1 => {
            return Err(LlamaIoError::unsupported(
                path,
                "GGUF version 1 (only versions 2 and 3 are supported)".into(),
            ));
        }
        v => return Err(format(format!("unknown GGUF version {v}"))),
    }
    let n_tensors = w.u64("the tensor count").map_err(format)?;
    let n_kv = w.u64("the metadata count").map_err(format)?;
    // Each metadata entry takes at least 13 bytes, each tensor entry 24.
    if n_kv
        .saturating_mul(13)
        .saturating_add(n_tensors.saturating_mul(24))
        > w.left
    {
        return Err(format(format!(
            "the header declares {n_kv} metadata entries and {n_tensors} tensors, more than \
             the file's {left} bytes can hold"
        )));
    }
    for i in 0..n_kv {
        let key = w.string(&format!("metadata key {i}")).map_err(format)?;
        let what = format!("metadata `{key}`");
        let t = w.u32(&what).map_err(format)?;
        w.value(t, 0, &what).map_err(format)?;
    }
    let mut unknown = None;
    for i in 0..n_tensors {
        let name = w.string(&format!("tensor name {i}")).map_err(format)?;
        let what = format!("tensor `{name}`");
        let n_dims = w.u32(&what).map_err(format)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(format(format!(
                "{what} has {n_dims} dimensions (1 to {MAX_DIMS} are possible)"
            )));
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = w.u64(&what).map_err(format)?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= left.saturating_mul(8))
                .ok_or_else(|| {
                    format(format!(
                        "{what} declares more values than the file can hold"
                    ))
                })?;
        }
        let id = w.u32(&what).map_err(format)?;
        w.u64(&what).map_err(format)?;
        let known = READABLE_TYPES
            .iter()
            .chain(&[GgmlDType::Q8_1, GgmlDType::Q8K])
            .any(|&d| ggml_type_id(d) == id);
        if !known && unknown.is_none() {
            unknown = Some((name, id));
        }
    }
    match unknown {
        Some((name, id)) => Err(LlamaIoError::unsupported(
            path,
            format!(
                "tensor `{name}` has GGML type {id} ({}), which candle cannot read; readable: {}",
                unknown_type_name(id),
                readable_list()
            ),
        )),
        None => Ok(()),
    }
}

/// Reads the header of the GGUF file at `path` (checked first by
/// [`check_header`], so that no bytes make candle's parser allocate
/// beyond the file) and checks its tensor table against the file
/// ([`check_tensor_table`]); returns it with the open file.
///
/// # Errors
/// The header's and the table's errors, naming the file and the entry.
pub(crate) fn read_content(path: &Path) -> Result<(Content, BufReader<File>)> {
    check_header(path)?;
    let io = |source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        LlamaIoError::format(
            path,
            format!("not a valid GGUF file: {}", CandleMessage(&e)),
        )
    })?;
    check_tensor_table(&content, path, file_size)?;
    Ok((content, reader))
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
