//! Perplexity by the protocol of the GPTQ and MagR papers, and the seeded sampler of
//! calibration windows.
//!
//! The token stream is cut into non-overlapping windows of `seqlen` tokens (the
//! trailing remainder is dropped). In window `w` the logits at positions
//! `0..seqlen-1` predict the tokens at `1..seqlen`, and
//! `nll_w = mean_p (logsumexp(z_p) - z_p[token_{p+1}])` over those `seqlen - 1`
//! positions. The perplexity is `exp(mean_w nll_w)`. [`perplexity_from`] scores only the
//! positions `first..seqlen-1` of each window: `first = seqlen / 2` is llama.cpp's
//! `llama-perplexity` protocol (the first half of each chunk is context only).

use std::time::Instant;

use candle_core::Tensor;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{LlamaIoError, Result};
use crate::host::{FollowPar, with_host_slice};
use crate::model::Model;
use crate::softmax::max_and_exp_sum_by_vocab;

/// Rows of logits (`rows x vocab`) formed at once when scoring a window; bounds the
/// memory of the loss to `LOSS_ROWS * vocab` floats.
pub(crate) const LOSS_ROWS: usize = 256;

/// The outcome of [`perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// `exp` of the mean over windows of the per-window mean cross-entropy.
    pub ppl: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Predicted positions scored: `windows * (seqlen - 1 - first)`.
    pub tokens_scored: usize,
    /// Wall-clock seconds of the evaluation (forward passes and losses).
    pub seconds: f64,
    /// Tokens run through the model per second: `windows * seqlen / seconds`.
    pub tokens_per_second: f64,
    /// Mean cross-entropy (nats) of each window, in order.
    pub window_nll: Vec<f64>,
}

/// Perplexity of `model` on `tokens` with windows of `seqlen` tokens, using the
/// first `max_windows` windows when given; the forward pass and the loss run as `par`
/// says. `progress(done, total)` is called after each window.
///
/// # Errors
/// `seqlen < 2`, a text that holds no full window, a token outside the vocabulary.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    par: Par,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport> {
    perplexity_from(model, tokens, seqlen, max_windows, 0, par, progress)
}

/// [`perplexity`] scoring only the predictions made at positions `first..seqlen - 1` of
/// each window (the tokens `first + 1..seqlen`); the positions before are context.
///
/// # Errors
/// As [`perplexity`]; `first >= seqlen - 1` (nothing left to score).
pub fn perplexity_from(
    model: &Model,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    first: usize,
    par: Par,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let windows = scored_windows(model, tokens, seqlen, max_windows, first)?;
    let start = Instant::now();
    let mut window_nll = Vec::with_capacity(windows);
    for (w, window) in tokens.chunks_exact(seqlen).take(windows).enumerate() {
        let hidden = model.hidden_states(&[window], par)?;
        let normed = model.final_norm(&hidden)?.squeeze(0)?;
        let mut total = 0.0f64;
        for r0 in (first..seqlen - 1).step_by(LOSS_ROWS) {
            let rows = LOSS_ROWS.min(seqlen - 1 - r0);
            let labels = &window[r0 + 1..r0 + 1 + rows];
            total += cross_entropy_sum(model, &normed.narrow(0, r0, rows)?, labels, par)?;
        }
        window_nll.push(total / (seqlen - 1 - first) as f64);
        progress(w + 1, windows);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = window_nll.iter().sum::<f64>() / windows as f64;
    Ok(PerplexityReport {
        ppl: mean.exp(),
        windows,
        tokens_scored: windows * (seqlen - 1 - first),
        seconds,
        tokens_per_second: (windows * seqlen) as f64 / seconds,
        window_nll,
    })
}

/// The number of windows that [`perplexity_from`] scores: the first `max_windows`
/// (all when `None`) full windows of `seqlen` tokens.
///
/// # Errors
/// `seqlen < 2`, `first >= seqlen - 1`, a window longer than the model takes, no full
/// window.
pub(crate) fn scored_windows(
    model: &Model,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    first: usize,
) -> Result<usize> {
    if seqlen < 2 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "perplexity window of {seqlen} tokens: at least 2 are needed"
        )));
    }
    if first >= seqlen - 1 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "perplexity window of {seqlen} tokens scored from position {first}: nothing to score"
        )));
    }
    model.config().check_window(seqlen)?;
    let available = tokens.len() / seqlen;
    let windows = max_windows.map_or(available, |m| m.min(available));
    if windows == 0 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "perplexity needs at least one window: {} tokens, seqlen {seqlen}, max_windows {max_windows:?}",
            tokens.len()
        )));
    }
    Ok(windows)
}

/// The running `(max, sum e^{z - max})` of each row over part of the vocabulary, and
/// the label's logit once its part is seen (`NaN` before).
struct RowStats {
    max: Vec<f32>,
    sum: Vec<f64>,
    label_logit: Vec<f32>,
}

impl RowStats {
    /// The statistics of logits `z` stored by vocabulary entry (`z[j * rows + r]`)
    /// for the entries `j0..j0 + z.len() / rows`.
    fn of(z: &[f32], rows: usize, j0: usize, labels: &[u32]) -> Self {
        let mut max = vec![0.0f32; rows];
        let mut sum = vec![0.0f64; rows];
        max_and_exp_sum_by_vocab(z, &mut max, &mut sum);
        let entries = j0..j0 + z.len() / rows;
        let label_logit = labels
            .iter()
            .enumerate()
            .map(|(r, &l)| {
                let l = l as usize;
                if entries.contains(&l) {
                    z[(l - j0) * rows + r]
                } else {
                    f32::NAN
                }
            })
            .collect();
        Self {
            max,
            sum,
            label_logit,
        }
    }

    /// The statistics of the union of two disjoint parts of the vocabulary:
    /// `m = max(m1, m2)`, `s = s1 e^{m1 - m} + s2 e^{m2 - m}`.
    fn merge(mut self, other: Self) -> Self {
        for r in 0..self.max.len() {
            let m = self.max[r].max(other.max[r]);
            self.sum[r] = self.sum[r] * f64::from(self.max[r] - m).exp()
                + other.sum[r] * f64::from(other.max[r] - m).exp();
            self.max[r] = m;
            if self.label_logit[r].is_nan() {
                self.label_logit[r] = other.label_logit[r];
            }
        }
        self
    }

    /// `sum_r (max_r + ln sum_r - z_r[label_r])`.
    fn cross_entropy_sum(&self) -> f64 {
        (0..self.max.len())
            .map(|r| f64::from(self.max[r]) + self.sum[r].ln() - f64::from(self.label_logit[r]))
            .sum()
    }
}

/// Vocabulary entries per task of the CPU loss: a task's logits
/// (`LOSS_ROWS x VOCAB_SLAB` f32, 2 MiB) stay in cache between the product that forms
/// them and the reduction that reads them.
const VOCAB_SLAB: usize = 2048;

/// `sum_r (logsumexp(z_r) - z_r[labels_r])` for the logits `z = normed head^T` of the
/// rows of `normed` (`[rows, hidden]`, `rows = labels.len()`), in f64.
///
/// On the CPU the vocabulary is cut into slabs, in parallel under `Par::Rayon`: each
/// task forms its slab's logits with one faer product and reduces them at once, and
/// the per-row statistics are merged (in rayon's reduction tree under `Par::Rayon`, as
/// a fold from the first slab under `Par::Seq`, which can differ in the last bits of
/// the f64 sums). Elsewhere the logits are formed on the device and reduced on the
/// host as one slab.
fn cross_entropy_sum(model: &Model, normed: &Tensor, labels: &[u32], par: Par) -> Result<f64> {
    if model.device().is_cpu() {
        cross_entropy_sum_host(model, normed, labels, par)
    } else {
        cross_entropy_sum_tensors(model, normed, labels, par)
    }
}

/// [`cross_entropy_sum`] with the logits formed by candle on the model's device.
fn cross_entropy_sum_tensors(
    model: &Model,
    normed: &Tensor,
    labels: &[u32],
    par: Par,
) -> Result<f64> {
    let logits = model.head_logits(normed, par)?.t()?.contiguous()?;
    with_host_slice(&logits, |z| {
        RowStats::of(z, labels.len(), 0, labels).cross_entropy_sum()
    })
}

/// [`cross_entropy_sum`] on the CPU, by vocabulary slabs (in parallel under
/// `Par::Rayon`).
fn cross_entropy_sum_host(model: &Model, normed: &Tensor, labels: &[u32], par: Par) -> Result<f64> {
    let rows = labels.len();
    let (vocab, d) = (model.config().vocab_size, model.config().hidden_size);
    let head = model.lm_head();
    let stats = with_host_slice(normed, |x| {
        (0..vocab.div_ceil(VOCAB_SLAB))
            .into_par_iter()
            .follow(par)
            .map_init(Vec::new, |z: &mut Vec<f32>, slab| {
                let j0 = slab * VOCAB_SLAB;
                let n = VOCAB_SLAB.min(vocab - j0);
                z.resize(rows * n, 0.0);
                matmul(
                    MatMut::from_column_major_slice_mut(z, rows, n),
                    Accum::Replace,
                    MatRef::from_row_major_slice(x, rows, d),
                    MatRef::from_row_major_slice(&head[j0 * d..(j0 + n) * d], n, d).transpose(),
                    1.0,
                    Par::Seq,
                );
                RowStats::of(z, rows, j0, labels)
            })
            .reduce_with(RowStats::merge)
    })?;
    Ok(stats.map_or(0.0, |s| s.cross_entropy_sum()))
}

/// `n` calibration windows of `seqlen` consecutive tokens at offsets drawn
/// uniformly from `0..=tokens.len() - seqlen - 1` (as GPTQ's sampler), with a
/// `StdRng` seeded by `seed`: the same seed gives the same windows.
pub fn sample_calibration(
    tokens: &[u32],
    n: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if seqlen == 0 || n == 0 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "calibration needs n >= 1 windows of seqlen >= 1 tokens (got n = {n}, seqlen = {seqlen})"
        )));
    }
    if tokens.len() < seqlen + 1 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "calibration text has {} tokens, fewer than seqlen + 1 = {}",
            tokens.len(),
            seqlen + 1
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let last_start = tokens.len() - seqlen - 1;
    Ok((0..n)
        .map(|_| {
            let start = rng.random_range(0..=last_start);
            tokens[start..start + seqlen].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::{HostTensor, LlamaConfig, TensorRole};

    /// The CPU loss (slabs of the vocabulary, merged statistics) equals the tensor path
    /// of other devices, run here on the CPU, over a vocabulary of several slabs.
    #[test]
    fn host_loss_matches_the_tensor_path() {
        let config = LlamaConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 8,
            vocab_size: 2 * VOCAB_SLAB + 77,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
            max_position_embeddings: 64,
            bos_token_id: None,
            eos_token_id: None,
        };
        let tensors: HashMap<String, HostTensor> = TensorRole::all(&config)
            .into_iter()
            .map(|role| {
                let shape = role.shape(&config);
                let n: usize = shape.iter().product();
                let data = (0..n)
                    .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.004)
                    .collect();
                (role.hf_name(), HostTensor { shape, data })
            })
            .collect();
        let model = Model::from_hf_tensors(config, tensors, None, Path::new("generated")).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 977 % 4173) as u32).collect();
        let normed = model
            .final_norm(&model.hidden_states(&[&tokens], Par::rayon(0)).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .narrow(0, 0, 39)
            .unwrap();
        let labels = &tokens[1..];
        let host = cross_entropy_sum_host(&model, &normed, labels, Par::rayon(0)).unwrap();
        let sequential = cross_entropy_sum_host(&model, &normed, labels, Par::Seq).unwrap();
        let tensors = cross_entropy_sum_tensors(&model, &normed, labels, Par::rayon(0)).unwrap();
        assert!(
            (host - sequential).abs() <= 1e-12 * sequential.abs(),
            "{host} vs {sequential}"
        );
        assert!(
            (host - tensors).abs() <= 1e-9 * tensors.abs(),
            "{host} vs {tensors}"
        );
        assert!(host > 0.0);
    }
}
