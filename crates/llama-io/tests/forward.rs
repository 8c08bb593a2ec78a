//! The candle forward pass against a naive f64 implementation of the Llama
//! equations, on tiny models written as safetensors and as GGUF.

mod common;

use candle_core::Tensor;
use common::{
    Reference, Spec, TINY, TempDir, load_hf, max_rel_diff, reference_forward, rows_f64, tokens,
};
use faer::Par;
use llama_io::{LinearInput, LinearKind, Model, XtxAccumulator};
use proptest::prelude::*;

/// Relative tolerance of f32 candle against f64 loops (the 1e-4).
const TOL: f64 = 1e-4;

fn check_against_reference(model: &Model, reference: &Reference, toks: &[u32]) {
    let logits = model.forward(&[toks], Par::rayon(0)).unwrap();
    assert_eq!(logits.dims(), &[1, toks.len(), model.config().vocab_size]);
    let err = max_rel_diff(&rows_f64(&logits), &reference.logits);
    assert!(
        err < TOL,
        "logits differ from the f64 reference by {err:e} (relative)"
    );
}

#[test]
fn forward_matches_f64_reference_safetensors() {
    let (_dir, weights, model) = load_hf(&TINY, 1);
    // Longer than one attention chunk (256) so the chunked path is exercised.
    let toks = tokens(300, TINY.vocab, 1);
    check_against_reference(&model, &reference_forward(&TINY, &weights, &toks), &toks);
}

#[test]
fn forward_matches_f64_reference_gguf() {
    let dir = TempDir::new("fwd-gguf");
    let weights = common::random_weights(&TINY, 2);
    let path = dir.path().join("tiny.gguf");
    common::write_gguf(&path, &TINY, &weights);
    let model = Model::load(&path).unwrap();
    let toks = tokens(40, TINY.vocab, 2);
    check_against_reference(&model, &reference_forward(&TINY, &weights, &toks), &toks);
}

#[test]
fn forward_matches_reference_tied_mha_and_other_theta() {
    // Tied head, no grouping (kv heads = heads), a different RoPE base and eps.
    let spec = Spec {
        tied: true,
        kv_heads: 4,
        theta: 500.0,
        eps: 1e-3,
        ..TINY
    };
    let (_dir, weights, model) = load_hf(&spec, 3);
    assert!(model.config().tie_word_embeddings);
    let toks = tokens(33, spec.vocab, 3);
    check_against_reference(&model, &reference_forward(&spec, &weights, &toks), &toks);
}

#[test]
fn forward_matches_reference_one_kv_head() {
    let spec = Spec {
        kv_heads: 1,
        layers: 1,
        ..TINY
    };
    let (_dir, weights, model) = load_hf(&spec, 4);
    let toks = tokens(17, spec.vocab, 4);
    check_against_reference(&model, &reference_forward(&spec, &weights, &toks), &toks);
}

#[test]
fn block_api_and_captured_inputs_match_reference() {
    let (_dir, weights, model) = load_hf(&TINY, 5);
    let toks = tokens(24, TINY.vocab, 5);
    let reference = reference_forward(&TINY, &weights, &toks);
    let mut hidden = model.embed(&[&toks]).unwrap();
    for block in 0..model.num_blocks() {
        let mut seen = Vec::new();
        let mut sink = |input: LinearInput, x: &Tensor| -> llama_io::Result<()> {
            seen.push((input, rows_f64(x)));
            Ok(())
        };
        hidden = model
            .run_block_capturing(block, &hidden, Par::Seq, &mut sink)
            .unwrap();
        let order: Vec<LinearInput> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, LinearInput::ALL);
        for (input, x) in &seen {
            let err = max_rel_diff(x, &reference.inputs[block][input.index()]);
            assert!(
                err < TOL,
                "block {block} input {input:?}: relative error {err:e}"
            );
        }
        let err = max_rel_diff(&rows_f64(&hidden), &reference.hidden[block]);
        assert!(err < TOL, "block {block} output: relative error {err:e}");
        // The plain variant gives the same output.
        let before = if block == 0 {
            model.embed(&[&toks]).unwrap()
        } else {
            let mut h = model.embed(&[&toks]).unwrap();
            for b in 0..block {
                h = model.run_block(b, &h, Par::Seq).unwrap();
            }
            h
        };
        let plain = model.run_block(block, &before, Par::Seq).unwrap();
        assert_eq!(rows_f64(&plain), rows_f64(&hidden));
    }
    let err = max_rel_diff(
        &rows_f64(&model.logits(&hidden, Par::rayon(0)).unwrap()),
        &reference.logits,
    );
    assert!(
        err < TOL,
        "logits from the block API: relative error {err:e}"
    );
}

#[test]
fn xtx_accumulator_sums_over_batches_and_sequences() {
    let (_dir, weights, model) = load_hf(&TINY, 6);
    let seqs = [
        tokens(20, TINY.vocab, 6),
        tokens(20, TINY.vocab, 7),
        tokens(20, TINY.vocab, 8),
    ];
    // Two calls: a batch of two sequences, then one more sequence.
    let mut acc = XtxAccumulator::new(model.config(), Par::rayon(0));
    model
        .run_block_capturing(
            0,
            &model.embed(&seqs[..2]).unwrap(),
            Par::rayon(0),
            &mut acc,
        )
        .unwrap();
    model
        .run_block_capturing(
            0,
            &model.embed(&seqs[2..]).unwrap(),
            Par::rayon(0),
            &mut acc,
        )
        .unwrap();
    for kind in LinearKind::ALL {
        let width = acc.width(kind);
        assert_eq!(width, model.linear_shape(kind).1);
        assert_eq!(acc.tokens(kind), 60);
        // Naive X^T X from the reference inputs of every sequence.
        let mut expected = vec![0.0f64; width * width];
        for s in &seqs {
            let x = &reference_forward(&TINY, &weights, s).inputs[0][kind.input().index()];
            for row in x {
                for i in 0..width {
                    for j in 0..width {
                        expected[i * width + j] += row[i] * row[j];
                    }
                }
            }
        }
        let got = acc.xtx(kind);
        let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&expected)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err < TOL, "{kind}: X^T X relative error {err:e}");
    }
    // Taking a sum hands it over and leaves nothing summed; an input never captured
    // holds no buffer and takes out as zeros.
    let input = LinearInput::MlpHidden;
    let sum = acc.xtx(LinearKind::Down).to_vec();
    assert_eq!(acc.take(input), sum);
    assert!(acc.xtx(LinearKind::Down).is_empty());
    assert_eq!(acc.tokens(LinearKind::Down), 0);
    let width = acc.width(LinearKind::Down);
    assert_eq!(acc.take(input), vec![0.0; width * width]);
    let fresh = XtxAccumulator::new(model.config(), Par::Seq);
    assert!(fresh.xtx(LinearKind::Q).is_empty());
}

#[test]
fn set_linear_weight_changes_the_forward_pass_and_checks_input() {
    let (_dir, mut weights, mut model) = load_hf(&TINY, 9);
    let (out, inp) = model.linear_shape(LinearKind::Down);
    let new: Vec<f32> = (0..out * inp)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
        .collect();
    model.set_linear_weight(1, LinearKind::Down, &new).unwrap();
    assert_eq!(model.linear_weight(1, LinearKind::Down).unwrap(), &new[..]);
    weights
        .get_mut("model.layers.1.mlp.down_proj.weight")
        .unwrap()
        .1 = new.clone();
    let toks = tokens(12, TINY.vocab, 9);
    check_against_reference(&model, &reference_forward(&TINY, &weights, &toks), &toks);

    // Wrong length, non-finite values and a bad block index change nothing.
    assert!(
        model
            .set_linear_weight(1, LinearKind::Down, &new[1..])
            .is_err()
    );
    let mut bad = new.clone();
    bad[5] = f32::NAN;
    assert!(model.set_linear_weight(1, LinearKind::Down, &bad).is_err());
    bad[5] = f32::INFINITY;
    assert!(model.set_linear_weight(1, LinearKind::Down, &bad).is_err());
    assert!(model.set_linear_weight(2, LinearKind::Down, &new).is_err());
    assert!(model.linear_weight(2, LinearKind::Q).is_err());
    assert_eq!(model.linear_weight(1, LinearKind::Down).unwrap(), &new[..]);
}

#[test]
fn bad_forward_inputs_are_errors() {
    let (_dir, _weights, model) = load_hf(&TINY, 10);
    assert!(model.embed(&[vec![0u32, 300]]).is_err(), "token id = vocab");
    assert!(
        model.embed(&[vec![1u32, 2], vec![3]]).is_err(),
        "ragged batch"
    );
    assert!(model.embed::<Vec<u32>>(&[]).is_err(), "empty batch");
    assert!(model.embed(&[Vec::<u32>::new()]).is_err(), "empty sequence");
    let wrong_width = Tensor::zeros(
        (1, 3, 63),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(model.run_block(0, &wrong_width, Par::rayon(0)).is_err());
    let f64_hidden = Tensor::zeros(
        (1, 3, 64),
        candle_core::DType::F64,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(model.run_block(0, &f64_hidden, Par::rayon(0)).is_err());
    let ok = model.embed(&[vec![1u32, 2]]).unwrap();
    assert!(
        model.run_block(2, &ok, Par::rayon(0)).is_err(),
        "block index out of range"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Changing a later token never changes the logits of earlier positions, and a
    /// batch gives each sequence the logits it gets alone.
    #[test]
    fn causal_and_batch_independent(
        toks in proptest::collection::vec(0u32..300, 2..40),
        other in proptest::collection::vec(0u32..300, 40),
        pos_frac in 0.0f64..1.0,
        replacement in 0u32..300,
    ) {
        use std::sync::OnceLock;
        static MODEL: OnceLock<Model> = OnceLock::new();
        let model = MODEL.get_or_init(|| {
            let dir = TempDir::new("causal");
            let weights = common::random_weights(&TINY, 11);
            common::write_hf(dir.path(), &TINY, &weights);
            Model::load(dir.path()).unwrap()
        });
        let n = toks.len();
        let pos = 1 + ((n - 1) as f64 * pos_frac) as usize % (n - 1);
        let mut changed = toks.clone();
        changed[pos] = (toks[pos] + 1 + replacement % 299) % 300;
        let second = &other[..n];
        let batch = rows_f64(&model.forward(&[&toks[..], &changed[..], second], Par::rayon(0)).unwrap());
        let vocab = TINY.vocab;
        let alone = rows_f64(&model.forward(&[&toks], Par::rayon(0)).unwrap());
        // Row r of the batch result is sequence r / n, position r % n.
        // Earlier positions agree to rounding; the changed position moves visibly.
        let err = max_rel_diff(&batch[n..n + pos], &batch[..pos]);
        prop_assert!(err < 1e-6, "positions before {pos} changed by {err:e}");
        let moved = max_rel_diff(&batch[n + pos..n + pos + 1], &batch[pos..pos + 1]);
        prop_assert!(moved > 1e-3, "the changed position moved only {moved:e}");
        let err = max_rel_diff(&batch[..n], &alone);
        prop_assert!(err < 1e-6, "batched vs alone: {err:e}");
        prop_assert_eq!(batch[2 * n].len(), vocab);
    }
}
