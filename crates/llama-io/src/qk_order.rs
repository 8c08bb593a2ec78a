//! The Q/K row order of GGUF files: llama.cpp applies RoPE to adjacent pairs
//! `(2j, 2j+1)` of a head, Hugging Face to `(j, j + h/2)` (`rotate_half`, `h` = head
//! dim), so its converter reorders the rows of `q_proj` and `k_proj` within each head:
//! GGUF row `2j + s` holds Hugging Face row `s * h/2 + j` (`j < h/2`, `s` in {0, 1}).
//! Re-exported by [`crate::gguf`].
//!
//! Uses `error` only.

use crate::error::{LlamaIoError, Result};

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
