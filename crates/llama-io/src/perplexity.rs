//! Perplexity by the protocol of the GPTQ and MagR papers, and the seeded sampler of
//! calibration windows.
//!
//! The token stream is cut into non-overlapping windows of `seqlen` tokens (the
//! trailing remainder is dropped). In window `w` the logits at positions
//! `0..seqlen-1` predict the tokens at `1..seqlen`, and
//! `nll_w = mean_p (logsumexp(z_p) - z_p[token_{p+1}])` over those `seqlen - 1`
//! positions. The perplexity is `exp(mean_w nll_w)`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{LlamaIoError, Result};
use crate::forward::with_host_slice;
use crate::model::Model;
use crate::softmax::log_sum_exp;

/// Rows of logits (`rows x vocab`) formed at once when scoring a window; bounds the
/// memory of the loss to `LOSS_ROWS * vocab` floats.
const LOSS_ROWS: usize = 256;

/// The outcome of [`perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// `exp` of the mean over windows of the per-window mean cross-entropy.
    pub ppl: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Predicted positions scored: `windows * (seqlen - 1)`.
    pub tokens_scored: usize,
    /// Wall-clock seconds of the evaluation (forward passes and losses).
    pub seconds: f64,
    /// Tokens run through the model per second: `windows * seqlen / seconds`.
    pub tokens_per_second: f64,
    /// Mean cross-entropy (nats) of each window, in order.
    pub window_nll: Vec<f64>,
}

/// Perplexity of `model` on `tokens` with windows of `seqlen` tokens, using the
/// first `max_windows` windows when given. `progress(done, total)` is called after
/// each window. Errors when `seqlen < 2` or the text holds no full window.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport> {
    if seqlen < 2 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "perplexity window of {seqlen} tokens: at least 2 are needed"
        )));
    }
    let available = tokens.len() / seqlen;
    let windows = max_windows.map_or(available, |m| m.min(available));
    if windows == 0 {
        return Err(LlamaIoError::InvalidArgument(format!(
            "perplexity needs at least one window: {} tokens, seqlen {seqlen}, max_windows {max_windows:?}",
            tokens.len()
        )));
    }
    let start = Instant::now();
    let mut window_nll = Vec::with_capacity(windows);
    for (w, window) in tokens.chunks_exact(seqlen).take(windows).enumerate() {
        let hidden = model.hidden_states(&[window])?;
        let normed = model.final_norm(&hidden)?.squeeze(0)?;
        let mut total = 0.0f64;
        for r0 in (0..seqlen - 1).step_by(LOSS_ROWS) {
            let rows = LOSS_ROWS.min(seqlen - 1 - r0);
            let logits = model.head_logits(&normed.narrow(0, r0, rows)?)?;
            let labels = &window[r0 + 1..r0 + 1 + rows];
            total += with_host_slice(&logits, |z| cross_entropy_sum(z, labels))?;
        }
        window_nll.push(total / (seqlen - 1) as f64);
        progress(w + 1, windows);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = window_nll.iter().sum::<f64>() / windows as f64;
    Ok(PerplexityReport {
        ppl: mean.exp(),
        windows,
        tokens_scored: windows * (seqlen - 1),
        seconds,
        tokens_per_second: (windows * seqlen) as f64 / seconds,
        window_nll,
    })
}

/// `sum_r (logsumexp(z_r) - z_r[labels_r])` over the rows of `z` (`rows x vocab`,
/// row-major), in f64.
fn cross_entropy_sum(z: &[f32], labels: &[u32]) -> f64 {
    let vocab = z.len() / labels.len();
    z.par_chunks_exact(vocab)
        .zip(labels.par_iter())
        .map_init(
            || vec![0.0f32; vocab],
            |scratch, (row, &label)| log_sum_exp(row, scratch) - f64::from(row[label as usize]),
        )
        .sum()
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
