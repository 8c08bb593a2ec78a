//! `compare`: a model against a reference, checked against the naive f64 forward pass.

mod common;

use common::{LINEARS, Spec, TINY, TempDir, Tensors, reference_forward};
use faer::Par;
use llama_io::{LinearKind, Model, compare, perplexity_from};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn write_and_load(spec: &Spec, weights: &Tensors) -> (TempDir, Model) {
    let dir = TempDir::new("compare");
    common::write_hf(dir.path(), spec, weights);
    let model = Model::load(dir.path()).unwrap();
    (dir, model)
}

/// The reference's weights with every linear weight moved by uniform noise of
/// `scale` times its range (what quantization does; embedding, norms, head kept).
fn perturbed(reference: &Tensors, scale: f32, seed: u64) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = reference.clone();
    for (name, (_, values)) in out.iter_mut() {
        if LINEARS.iter().any(|(_, proj)| name.contains(proj)) {
            let range = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for v in values.iter_mut() {
                *v += scale * range * rng.random_range(-1.0f32..1.0);
            }
        }
    }
    out
}

fn stream(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) % vocab)
        .collect()
}

fn softmax_log(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

fn argmax(z: &[f64]) -> usize {
    (0..z.len()).fold(0, |best, i| if z[i] > z[best] { i } else { best })
}

fn weight(t: &Tensors, block: usize, kind: LinearKind) -> &[f32] {
    &t[&kind.hf_name(block)].1
}

/// Everything `compare` gives, from the f64 reference forward pass written out in
/// `common`, for windows of `seqlen` scored from `first`.
struct Naive {
    mean_kl: f64,
    top1: f64,
    ppl: f64,
    reference_ppl: f64,
    block_error: Vec<f64>,
    layer_loss: Vec<f64>,
}

fn naive(
    spec: &Spec,
    model: &Tensors,
    reference: &Tensors,
    windows: &[&[u32]],
    first: usize,
) -> Naive {
    let seqlen = windows[0].len();
    let (mut kl, mut agree, mut nll, mut nll_ref) = (0.0, 0usize, 0.0, 0.0);
    let mut block_error = vec![0.0; spec.layers];
    let mut layer_loss = vec![0.0; spec.layers * 7];
    for window in windows {
        let ours = reference_forward(spec, model, window);
        let theirs = reference_forward(spec, reference, window);
        for p in first..seqlen - 1 {
            let (lq, lp) = (softmax_log(&ours.logits[p]), softmax_log(&theirs.logits[p]));
            kl += lp
                .iter()
                .zip(&lq)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
            agree += usize::from(argmax(&ours.logits[p]) == argmax(&theirs.logits[p]));
            let label = window[p + 1] as usize;
            nll -= lq[label];
            nll_ref -= lp[label];
        }
        for b in 0..spec.layers {
            for (h, h_ref) in ours.hidden[b].iter().zip(&theirs.hidden[b]) {
                let diff: f64 = h.iter().zip(h_ref).map(|(x, y)| (x - y).powi(2)).sum();
                let norm: f64 = h_ref.iter().map(|y| y * y).sum();
                block_error[b] += (diff / norm).sqrt();
            }
            for kind in LinearKind::ALL {
                let (w, w_ref) = (weight(model, b, kind), weight(reference, b, kind));
                let inputs = &ours.inputs[b][kind.input().index()];
                let width = inputs[0].len();
                for x in inputs {
                    layer_loss[b * 7 + kind.index()] += w
                        .chunks_exact(width)
                        .zip(w_ref.chunks_exact(width))
                        .map(|(row, row_ref)| {
                            let y: f64 = x
                                .iter()
                                .zip(row.iter().zip(row_ref))
                                .map(|(xi, (a, b))| xi * (f64::from(*a) - f64::from(*b)))
                                .sum();
                            y * y
                        })
                        .sum::<f64>();
                }
            }
        }
    }
    let scored = (windows.len() * (seqlen - 1 - first)) as f64;
    let positions = (windows.len() * seqlen) as f64;
    Naive {
        mean_kl: kl / scored,
        top1: agree as f64 / scored,
        ppl: (nll / scored).exp(),
        reference_ppl: (nll_ref / scored).exp(),
        block_error: block_error.iter().map(|e| e / positions).collect(),
        layer_loss: layer_loss.iter().map(|l| l / positions).collect(),
    }
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-6),
        "{what}: {got} vs naive {want} (relative tolerance {rel})"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Every figure equals the naive f64 computation (f32 forward pass: relative 1e-3;
    /// the top-1 agreement exactly, except where two logits tie within f32 rounding).
    #[test]
    fn figures_match_the_naive_forward_pass(
        seed in 0u64..1000,
        scale in 0.02f32..0.3,
        first in prop_oneof![Just(0usize), Just(15)],
    ) {
        let reference = common::random_weights(&TINY, seed);
        let model = perturbed(&reference, scale, seed + 1);
        let (_d1, reference_model) = write_and_load(&TINY, &reference);
        let (_d2, model_model) = write_and_load(&TINY, &model);
        let seqlen = 32;
        let tokens = stream(3 * seqlen + 5, TINY.vocab as u32);
        let mut calls = Vec::new();
        let c = compare(
            &model_model,
            &reference_model,
            &tokens,
            seqlen,
            Some(2),
            first,
            Par::rayon(0),
            &mut |done, total| calls.push((done, total)),
        )
        .unwrap();
        prop_assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
        prop_assert_eq!(c.windows, 2);
        prop_assert_eq!(c.tokens_scored, 2 * (seqlen - 1 - first));
        let windows: Vec<&[u32]> = tokens.chunks_exact(seqlen).take(2).collect();
        let n = naive(&TINY, &model, &reference, &windows, first);
        prop_assert!(c.mean_kl > 0.0);
        close("mean KL", c.mean_kl, n.mean_kl, 1e-3);
        close("top-1 agreement", c.top1_agreement, n.top1, 0.02);
        close("ppl", c.ppl, n.ppl, 1e-4);
        close("reference ppl", c.reference_ppl, n.reference_ppl, 1e-4);
        for (b, (got, want)) in c.block_error.iter().zip(&n.block_error).enumerate() {
            close(&format!("block {b} error"), *got, *want, 1e-3);
        }
        prop_assert_eq!(c.layers.len(), TINY.layers * 7);
        for (layer, want) in c.layers.iter().zip(&n.layer_loss) {
            close(&format!("block {} {}", layer.block, layer.kind), layer.loss_per_token, *want, 1e-3);
        }
        // The perplexities are those of `perplexity_from` on the same windows.
        let ppl = perplexity_from(&model_model, &tokens, seqlen, Some(2), first, Par::rayon(0), &mut |_, _| {}).unwrap().ppl;
        close("ppl against perplexity_from", c.ppl, ppl, 1e-6);
    }
}

/// A model against itself: no divergence, no error, full agreement, and the same
/// perplexity as `perplexity_from`.
#[test]
fn a_model_against_itself_is_exactly_zero() {
    let weights = common::random_weights(&TINY, 5);
    let (_d, model) = write_and_load(&TINY, &weights);
    let tokens = stream(100, TINY.vocab as u32);
    let c = compare(
        &model,
        &model,
        &tokens,
        40,
        None,
        0,
        Par::rayon(0),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(c.windows, 2);
    assert_eq!(c.mean_kl, 0.0);
    assert_eq!(c.top1_agreement, 1.0);
    assert_eq!(c.ppl, c.reference_ppl);
    assert!(c.block_error.iter().all(|&e| e == 0.0));
    assert!(c.layers.iter().all(|l| l.loss_per_token == 0.0));
    let ppl = perplexity_from(&model, &tokens, 40, None, 0, Par::Seq, &mut |_, _| {})
        .unwrap()
        .ppl;
    close("ppl", c.ppl, ppl, 1e-6);
}

/// Models of different shapes are refused by name before any work.
#[test]
fn different_shapes_are_an_error_naming_the_field() {
    let (_d1, a) = write_and_load(&TINY, &common::random_weights(&TINY, 1));
    let wide = Spec {
        intermediate: 128,
        ..TINY
    };
    let (_d2, b) = write_and_load(&wide, &common::random_weights(&wide, 1));
    let tokens = stream(100, TINY.vocab as u32);
    let e = compare(&a, &b, &tokens, 40, None, 0, Par::rayon(0), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("intermediate_size (96 vs 128)"), "{e}");
    let e = compare(
        &a,
        &a,
        &tokens[..30],
        40,
        None,
        0,
        Par::rayon(0),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least one window"), "{e}");
}
