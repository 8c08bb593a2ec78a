//! How far a model is from a reference of the same architecture (a quantized model
//! from its float original) on the same text: the divergence of the next-token
//! distributions, the error of the hidden state after each block and the loss of each
//! linear layer on held-out tokens.
//!
//! Windows are cut as in [`crate::perplexity`] (non-overlapping, `seqlen` tokens, the
//! predictions at positions `first..seqlen - 1` scored). With `p` the reference's and
//! `q` the model's next-token distributions at a scored position:
//! - `KL(p || q) = sum_v p_v (ln p_v - ln q_v)` (nats), averaged over scored positions
//!   (llama.cpp's `--kl-divergence` measure);
//! - top-1 agreement: the share of scored positions where both rank the same token first;
//! - each model's perplexity, as [`crate::perplexity_from`] defines it.
//!
//! Per block `b`, the mean over every position `t` of `||h_t - h'_t|| / ||h'_t||`, with
//! `h` the model's and `h'` the reference's hidden state after block `b` (each from its
//! own earlier blocks). Per linear layer, the mean over every position of
//! `||x_t (W - W')^T||^2` with `x_t` the model's own input to the layer: the layer loss
//! `tr((W' - W)^T H (W' - W))` that the quantizers minimise on calibration tokens, here
//! per token on the evaluation text.

use std::time::Instant;

use candle_core::Tensor;
use faer::Par;
use rayon::prelude::*;

use crate::error::{LlamaIoError, Result};
use crate::host::{FollowPar, with_host_slice};
use crate::linear::{LinearInput, LinearKind};
use crate::model::Model;
use crate::perplexity::{LOSS_ROWS, scored_windows};
use crate::softmax::divergence_row;

/// The loss of one linear layer of the model against the reference's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDivergence {
    /// Block index.
    pub block: usize,
    /// The layer.
    pub kind: LinearKind,
    /// Mean over positions of `||x_t (W - W')^T||^2`.
    pub loss_per_token: f64,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Windows evaluated.
    pub windows: usize,
    /// Predicted positions scored: `windows * (seqlen - 1 - first)`.
    pub tokens_scored: usize,
    /// The model's perplexity.
    pub ppl: f64,
    /// The reference's perplexity on the same positions.
    pub reference_ppl: f64,
    /// Mean `KL(reference || model)` over scored positions, in nats.
    pub mean_kl: f64,
    /// Share of scored positions where both models rank the same token first.
    pub top1_agreement: f64,
    /// Per block, the mean relative error of the hidden state after it.
    pub block_error: Vec<f64>,
    /// Per linear layer (blocks in order, layers in [`LinearKind::ALL`] order).
    pub layers: Vec<LayerDivergence>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Compares `model` with `reference` (same shapes; each on its own device, so that the
/// same weights on a GPU and on the CPU compare the devices) on the first `max_windows`
/// windows of `seqlen` tokens of `tokens`, scoring positions `first..seqlen - 1`; block
/// by block (both models' hidden states of every window held), products as `par` says;
/// `progress(done, total)` after each block and after the head.
///
/// # Errors
/// Shapes that differ (naming the first field that does), and [`crate::perplexity_from`]'s.
#[allow(clippy::too_many_arguments)] // perplexity_from's, with the reference
pub fn compare(
    model: &Model,
    reference: &Model,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    first: usize,
    par: Par,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Comparison> {
    same_shapes(model, reference)?;
    let windows = scored_windows(model, tokens, seqlen, max_windows, first)?;
    let start = Instant::now();
    let windows_tokens: Vec<&[u32]> = tokens.chunks_exact(seqlen).take(windows).collect();
    let mut ours = windows_tokens
        .iter()
        .map(|w| model.embed(&[w]))
        .collect::<Result<Vec<_>>>()?;
    let mut theirs = windows_tokens
        .iter()
        .map(|w| reference.embed(&[w]))
        .collect::<Result<Vec<_>>>()?;
    let (ctx, ctx_ref) = (
        model.sequence_context(seqlen)?,
        reference.sequence_context(seqlen)?,
    );
    let blocks = model.num_blocks();
    let positions = (windows * seqlen) as f64;
    let (mut block_error, mut layers) = (Vec::with_capacity(blocks), Vec::new());
    for block in 0..blocks {
        let deltas = LinearKind::ALL
            .iter()
            .map(|&kind| {
                let (w, w_ref) = (
                    model.linear_weight(block, kind)?,
                    reference.linear_weight(block, kind)?,
                );
                Ok(w.iter().zip(w_ref.iter()).map(|(a, b)| a - b).collect())
            })
            .collect::<Result<Vec<Vec<f32>>>>()?;
        let mut loss = [0.0f64; 7];
        let mut error = 0.0f64;
        for (h, h_ref) in ours.iter_mut().zip(theirs.iter_mut()) {
            let mut sink = |input: LinearInput, x: &Tensor| -> Result<()> {
                for kind in LinearKind::ALL.into_iter().filter(|k| k.input() == input) {
                    let (out, inp) = kind.shape(model.config());
                    let y = model.times_weight_t(x, &deltas[kind.index()], out, inp, par)?;
                    loss[kind.index()] += with_host_slice(&y, sum_of_squares)?;
                }
                Ok(())
            };
            let next = model.block_forward(block, h, &ctx, par, Some(&mut sink))?;
            let next_ref = reference.block_forward(block, h_ref, &ctx_ref, par, None)?;
            error += relative_errors(&next, &next_ref, model.config().hidden_size)?;
            (*h, *h_ref) = (next, next_ref);
        }
        block_error.push(error / positions);
        layers.extend(LinearKind::ALL.iter().map(|&kind| LayerDivergence {
            block,
            kind,
            loss_per_token: loss[kind.index()] / positions,
        }));
        progress(block + 1, blocks + 1);
    }
    let mut totals = RowTotals::default();
    for ((w, h), h_ref) in windows_tokens.iter().zip(&ours).zip(&theirs) {
        let normed = model.final_norm(h)?.squeeze(0)?;
        let normed_ref = reference.final_norm(h_ref)?.squeeze(0)?;
        for r0 in (first..seqlen - 1).step_by(LOSS_ROWS) {
            let rows = LOSS_ROWS.min(seqlen - 1 - r0);
            let z = model.head_logits(&normed.narrow(0, r0, rows)?, par)?;
            let z_ref = reference.head_logits(&normed_ref.narrow(0, r0, rows)?, par)?;
            let labels = &w[r0 + 1..r0 + 1 + rows];
            totals.add(with_host_slice(&z, |z| {
                with_host_slice(&z_ref, |z_ref| RowTotals::of(z, z_ref, labels, par))
            })??);
        }
    }
    progress(blocks + 1, blocks + 1);
    let scored = (windows * (seqlen - 1 - first)) as f64;
    Ok(Comparison {
        windows,
        tokens_scored: windows * (seqlen - 1 - first),
        ppl: (totals.nll / scored).exp(),
        reference_ppl: (totals.nll_ref / scored).exp(),
        mean_kl: totals.kl / scored,
        top1_agreement: totals.agree as f64 / scored,
        block_error,
        layers,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Both models have the same shapes (so that weights and hidden states pair up).
fn same_shapes(model: &Model, reference: &Model) -> Result<()> {
    let (a, b) = (model.config(), reference.config());
    let fields = [
        ("hidden_size", a.hidden_size, b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size,
            b.intermediate_size,
        ),
        (
            "num_hidden_layers",
            a.num_hidden_layers,
            b.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            a.num_attention_heads,
            b.num_attention_heads,
        ),
        (
            "num_key_value_heads",
            a.num_key_value_heads,
            b.num_key_value_heads,
        ),
        ("head_dim", a.head_dim, b.head_dim),
        ("vocab_size", a.vocab_size, b.vocab_size),
    ];
    match fields.iter().find(|(_, x, y)| x != y) {
        Some((name, x, y)) => Err(LlamaIoError::InvalidArgument(format!(
            "the model and the reference differ in {name} ({x} vs {y}): a comparison needs the same shapes"
        ))),
        None => Ok(()),
    }
}

fn sum_of_squares(v: &[f32]) -> f64 {
    v.iter().map(|&a| f64::from(a) * f64::from(a)).sum()
}

/// `sum_t ||h_t - h'_t|| / ||h'_t||` over the positions of `[1, seq, width]` states.
fn relative_errors(h: &Tensor, h_ref: &Tensor, width: usize) -> Result<f64> {
    with_host_slice(h, |h| {
        with_host_slice(h_ref, |h_ref| {
            h.chunks_exact(width)
                .zip(h_ref.chunks_exact(width))
                .map(|(a, b)| {
                    let diff: f64 = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                        .sum();
                    (diff / sum_of_squares(b)).sqrt()
                })
                .sum()
        })
    })?
}

/// Sums over scored positions.
#[derive(Debug, Default)]
struct RowTotals {
    kl: f64,
    nll: f64,
    nll_ref: f64,
    agree: usize,
}

impl RowTotals {
    fn add(&mut self, other: Self) {
        self.kl += other.kl;
        self.nll += other.nll;
        self.nll_ref += other.nll_ref;
        self.agree += other.agree;
    }

    /// The totals of logit rows `z` (model) and `z_ref` (`rows x vocab`, row-major) with
    /// the tokens that follow, `labels`.
    fn of(z: &[f32], z_ref: &[f32], labels: &[u32], par: Par) -> Self {
        let vocab = z.len() / labels.len();
        z.par_chunks(vocab)
            .zip(z_ref.par_chunks(vocab))
            .zip(labels.par_iter())
            .follow(par)
            .map(|((z, z_ref), &label)| {
                let (lse, lse_ref, kl) = divergence_row(z, z_ref);
                let label = label as usize;
                RowTotals {
                    kl,
                    nll: lse - f64::from(z[label]),
                    nll_ref: lse_ref - f64::from(z_ref[label]),
                    agree: usize::from(argmax(z) == argmax(z_ref)),
                }
            })
            .reduce(RowTotals::default, |mut a, b| {
                a.add(b);
                a
            })
    }
}

/// The first index of the largest logit.
fn argmax(z: &[f32]) -> usize {
    (0..z.len()).fold(0, |best, i| if z[i] > z[best] { i } else { best })
}
