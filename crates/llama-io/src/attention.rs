//! Causal grouped-query attention and rotary position embeddings.
//!
//! Queries are processed in chunks of [`QUERY_CHUNK`] positions: chunk `[c0, c1)`
//! only needs the keys `[0, c1)`, so about half of the `t x t` score matrix of a
//! long sequence is never computed. On the CPU the products are faer's and the
//! softmax skips the entries above the diagonal instead of exponentiating `-inf`.

use candle_core::{D, Device, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::Result;
use crate::gemm::gemm;
use crate::host::{FollowPar, with_host_slice};

/// Query positions per attention chunk.
pub(crate) const QUERY_CHUNK: usize = 256;

/// Query positions per task of the CPU path: small enough that a task's scores
/// (`group * HOST_QUERY_CHUNK` rows of up to `t` keys) stay in a core's cache.
const HOST_QUERY_CHUNK: usize = 64;

/// RoPE tables `cos`, `sin`, each `[seq_len, head_dim / 2]`: entry `(p, i)` is the
/// cosine / sine of `p * theta^(-2i / head_dim)`, computed in f64 and rounded.
pub(crate) fn rope_tables(
    seq_len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq_len * half);
    let mut sin = Vec::with_capacity(seq_len * half);
    for p in 0..seq_len {
        for i in 0..half {
            let angle = p as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (seq_len, half), device)?,
        Tensor::from_vec(sin, (seq_len, half), device)?,
    ))
}

/// `softmax(scale q k^T + causal mask) v` for rotated `q` `[b, n_heads, t, hd]` and
/// `k`, `v` `[b, n_kv_heads, t, hd]`; query head `h` reads key/value head
/// `h / (n_heads / n_kv_heads)`. Returns the heads merged, `[b, t, n_heads * hd]`
/// (position-major, head `h` in columns `h*hd..(h+1)*hd`), the input of `o_proj`.
/// On the CPU the tasks run as `par` says (the result does not depend on it).
pub(crate) fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    par: Par,
) -> Result<Tensor> {
    if q.device().is_cpu() {
        causal_attention_host(q, k, v, scale, par)
    } else {
        causal_attention_tensors(q, k, v, scale)
    }
}

/// The CPU path: one task per (sequence, chunk of queries), in parallel under
/// [`Par::Rayon`], in order under [`Par::Seq`]. For each
/// key/value head, a task stacks the chunk's rows of the query heads that share the
/// key/value head (`Q_g`, `group * len` rows), forms `S = scale Q_g K[..c1]^T` and
/// `O = softmax(S) V[..c1]` with two faer products, the softmax of each row over its
/// visible keys `0..=c0 + r` only, and writes `O` into the merged-head layout.
fn causal_attention_host(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    par: Par,
) -> Result<Tensor> {
    let (b, n_heads, t, hd) = q.dims4()?;
    let n_kv = k.dim(1)?;
    let group = n_heads / n_kv;
    let chunks = t.div_ceil(HOST_QUERY_CHUNK);
    let width = n_heads * hd;
    let out = with_host_slice(q, |q| {
        with_host_slice(k, |k| {
            with_host_slice(v, |v| {
                // One task per (sequence, chunk), in that order; the key/value heads of
                // a chunk run one after the other inside its task.
                let tasks: Vec<(usize, usize)> = (0..b)
                    .flat_map(|seq| (0..chunks).map(move |c| (seq, c)))
                    .collect();
                let blocks: Vec<Vec<f32>> = tasks
                    .par_iter()
                    .follow(par)
                    .map_init(
                        || (Vec::new(), Vec::new()),
                        |(qg, scores), &(seq, c)| {
                            let c0 = c * HOST_QUERY_CHUNK;
                            let (len, c1) =
                                (HOST_QUERY_CHUNK.min(t - c0), (c0 + HOST_QUERY_CHUNK).min(t));
                            let rows_g = group * len;
                            let mut o_chunk = vec![0.0f32; len * width];
                            let mut o = vec![0.0f32; rows_g * hd];
                            for kv in 0..n_kv {
                                qg.clear();
                                for g in 0..group {
                                    let head = seq * n_heads + kv * group + g;
                                    let first = (head * t + c0) * hd;
                                    qg.extend_from_slice(&q[first..first + len * hd]);
                                }
                                let kv_first = (seq * n_kv + kv) * t;
                                let (kc, vc) =
                                    (rows(k, kv_first, c1, hd), rows(v, kv_first, c1, hd));
                                scores.resize(rows_g * c1, 0.0);
                                matmul(
                                    MatMut::from_row_major_slice_mut(scores, rows_g, c1),
                                    Accum::Replace,
                                    MatRef::from_row_major_slice(qg, rows_g, hd),
                                    kc.transpose(),
                                    scale as f32,
                                    Par::Seq,
                                );
                                for (r, s) in scores.chunks_exact_mut(c1).enumerate() {
                                    let visible = c0 + r % len + 1;
                                    crate::softmax::softmax_in_place(&mut s[..visible]);
                                    s[visible..].fill(0.0);
                                }
                                matmul(
                                    MatMut::from_row_major_slice_mut(&mut o, rows_g, hd),
                                    Accum::Replace,
                                    MatRef::from_row_major_slice(scores, rows_g, c1),
                                    vc,
                                    1.0,
                                    Par::Seq,
                                );
                                for g in 0..group {
                                    let col = (kv * group + g) * hd;
                                    for r in 0..len {
                                        o_chunk[r * width + col..r * width + col + hd]
                                            .copy_from_slice(
                                                &o[(g * len + r) * hd..(g * len + r + 1) * hd],
                                            );
                                    }
                                }
                            }
                            o_chunk
                        },
                    )
                    .collect();
                // Tasks are in (sequence, chunk) order: concatenated, [b, t, width].
                blocks.concat()
            })
        })
    })???;
    Ok(Tensor::from_vec(out, (b, t, width), q.device())?)
}

/// Rows `first..first + count` of a row-major matrix with `width` columns.
fn rows(x: &[f32], first: usize, count: usize, width: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(&x[first * width..(first + count) * width], count, width)
}

/// The same attention with candle operations, for devices without the host path:
/// queries in chunks that read only the keys they can see, an additive `-inf` mask
/// and the library softmax.
fn causal_attention_tensors(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, n_heads, t, hd) = q.dims4()?;
    let q = (q * scale)?;
    let n_kv = k.dim(1)?;
    let group = n_heads / n_kv;
    // Heads sharing one key/value head are adjacent: [b, n_kv, group, t, hd].
    let q = q.reshape((b, n_kv, group, t, hd))?;
    let mut outputs = Vec::with_capacity(t.div_ceil(QUERY_CHUNK));
    for c0 in (0..t).step_by(QUERY_CHUNK) {
        let len = QUERY_CHUNK.min(t - c0);
        let c1 = c0 + len;
        let qc = q
            .narrow(3, c0, len)?
            .contiguous()?
            .reshape((b, n_kv, group * len, hd))?;
        let kc = k.narrow(2, 0, c1)?;
        let vc = v.narrow(2, 0, c1)?;
        let scores = gemm(&qc, &kc.t()?)?;
        let probs = masked_softmax(&scores, len, c0)?;
        outputs.push(gemm(&probs, &vc)?.reshape((b, n_kv, group, len, hd))?);
    }
    Ok(Tensor::cat(&outputs, 3)?
        .reshape((b, n_heads, t, hd))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, n_heads * hd))?)
}

/// Row-wise softmax of `scores` `[.., rows, c1]` where row `r` belongs to query
/// position `offset + r % chunk` and may only see keys `0..=offset + r % chunk`:
/// an additive `-inf` mask and the library softmax.
fn masked_softmax(scores: &Tensor, chunk: usize, offset: usize) -> Result<Tensor> {
    let scores = scores.contiguous()?;
    let keys = scores.dim(D::Minus1)?;
    let mask: Vec<f32> = (0..chunk)
        .flat_map(|r| {
            (0..keys).map(move |s| {
                if s <= offset + r {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (chunk, keys), scores.device())?;
    let dims = scores.dims();
    let rows = dims[dims.len() - 2];
    let lead: usize = dims[..dims.len() - 2].iter().product::<usize>() * rows / chunk;
    let masked = scores
        .reshape((lead, chunk, keys))?
        .broadcast_add(&mask)?
        .reshape(dims)?;
    Ok(candle_nn::ops::softmax_last_dim(&masked)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host path and the candle path agree (several chunks, a partial last chunk,
    /// grouped heads, two sequences).
    #[test]
    fn host_attention_matches_the_tensor_path() {
        let device = Device::Cpu;
        let (b, nh, nkv, t, hd) = (2, 6, 2, 2 * QUERY_CHUNK + 37, 16);
        assert!(t % HOST_QUERY_CHUNK != 0);
        let q = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, nkv, t, hd), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, nkv, t, hd), &device).unwrap();
        let host = causal_attention_host(&q, &k, &v, 0.25, Par::rayon(0)).unwrap();
        let sequential = causal_attention_host(&q, &k, &v, 0.25, Par::Seq).unwrap();
        assert_eq!(
            host.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            sequential.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "independent tasks: the same bits in any order"
        );
        let tensors = causal_attention_tensors(&q, &k, &v, 0.25).unwrap();
        assert_eq!(host.dims(), &[b, t, nh * hd]);
        let diff = (host - tensors).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
