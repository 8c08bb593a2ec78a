//! Folding the norm gains and rotating the residual stream keep the model's function:
//! the changed model's logits against the naive f64 forward pass of the original weights.

mod common;

use common::{Spec, TINY, load_hf, max_rel_diff, reference_forward, rows_f64, tokens};
use faer::{Mat, Par};
use llama_io::rotate::random_orthogonal;
use llama_io::{LinearKind, TensorRole};
use proptest::prelude::*;

/// Relative tolerance of f32 candle against f64 loops (as the forward tests), which the
/// f32 rounding of the rotated weights must also stay within.
const TOL: f64 = 1e-4;

/// Largest `|Q^T Q - I|` entry, in f64 loops.
fn orthogonality_error(q: &Mat<f64>) -> f64 {
    let n = q.nrows();
    let mut worst = 0.0f64;
    for i in 0..n {
        for j in 0..n {
            let dot: f64 = (0..n).map(|k| q[(k, i)] * q[(k, j)]).sum();
            worst = worst.max((dot - if i == j { 1.0 } else { 0.0 }).abs());
        }
    }
    worst
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn folded_and_rotated_models_compute_the_original_logits(
        seed in 0u64..1000,
        tied in any::<bool>(),
    ) {
        let spec = Spec { tied, ..TINY };
        let (_dir, weights, mut model) = load_hf(&spec, seed);
        let toks = tokens(40, spec.vocab, seed);
        let reference = reference_forward(&spec, &weights, &toks);
        let q_before = model.linear_weight(0, LinearKind::Q).unwrap().into_owned();

        model.fold_norm_gains().unwrap();
        prop_assert!(!model.config().tie_word_embeddings);
        prop_assert!(model.tensor(TensorRole::AttnNorm(1)).unwrap().iter().all(|&g| g == 1.0));
        let logits = model.forward(&[&toks], Par::Seq).unwrap();
        let err = max_rel_diff(&rows_f64(&logits), &reference.logits);
        prop_assert!(err < TOL, "folded: logits differ by {err:e}");

        let q = random_orthogonal(spec.hidden, seed);
        model.rotate_residual(q.as_ref(), Par::Seq).unwrap();
        let logits = model.forward(&[&toks], Par::Seq).unwrap();
        let err = max_rel_diff(&rows_f64(&logits), &reference.logits);
        prop_assert!(err < TOL, "rotated: logits differ by {err:e}");
        // The weights themselves moved: no entry of q_proj is where it was.
        let q_after = model.linear_weight(0, LinearKind::Q).unwrap();
        let kept = q_before.iter().zip(q_after.iter()).filter(|(a, b)| a == b).count();
        prop_assert!(kept < q_before.len() / 100, "{kept} of {} entries unchanged", q_before.len());
    }
}

#[test]
fn random_rotations_are_orthogonal_and_seeded() {
    let a = random_orthogonal(48, 3);
    assert!(
        orthogonality_error(&a) < 1e-12,
        "{}",
        orthogonality_error(&a)
    );
    assert_eq!(a, random_orthogonal(48, 3));
    assert_ne!(a, random_orthogonal(48, 4));
}

#[test]
fn a_rotation_that_would_change_the_function_is_refused() {
    let (_dir, _, mut model) = load_hf(&TINY, 5);
    let q = random_orthogonal(TINY.hidden, 1);
    // Gains not folded yet.
    let err = model.rotate_residual(q.as_ref(), Par::Seq).unwrap_err();
    assert!(err.to_string().contains("folded"), "{err}");
    model.fold_norm_gains().unwrap();
    let folded = model.embedding().to_vec();
    // Not orthogonal: one column scaled.
    let mut skewed = q.clone();
    for i in 0..TINY.hidden {
        skewed[(i, 0)] *= 1.001;
    }
    let err = model
        .rotate_residual(skewed.as_ref(), Par::Seq)
        .unwrap_err();
    assert!(err.to_string().contains("not orthogonal"), "{err}");
    // The wrong size.
    let small = random_orthogonal(TINY.hidden - 1, 1);
    let err = model.rotate_residual(small.as_ref(), Par::Seq).unwrap_err();
    assert!(err.to_string().contains("hidden size is 64"), "{err}");
    // Nothing changed by the refusals.
    assert_eq!(model.embedding(), &folded[..]);
    model.rotate_residual(q.as_ref(), Par::Seq).unwrap();
    assert_ne!(model.embedding(), &folded[..]);
}
