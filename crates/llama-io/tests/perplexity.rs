//! Perplexity (GPTQ protocol) and the calibration sampler.

mod common;

use common::{Spec, TINY, TempDir, reference_forward};
use faer::Par;
use llama_io::{Model, perplexity, sample_calibration};
use proptest::prelude::*;

fn load(
    spec: &Spec,
    edit: impl FnOnce(&mut common::Tensors),
    seed: u64,
) -> (TempDir, common::Tensors, Model) {
    let dir = TempDir::new("ppl");
    let mut weights = common::random_weights(spec, seed);
    edit(&mut weights);
    common::write_hf(dir.path(), spec, &weights);
    let model = Model::load(dir.path()).unwrap();
    (dir, weights, model)
}

fn stream(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % vocab)
        .collect()
}

#[test]
fn all_zero_logits_give_the_vocabulary_size() {
    // A zero output head makes every logit 0: uniform predictions, ppl = vocab.
    let (_dir, _w, model) = load(
        &TINY,
        |w| {
            w.get_mut("lm_head.weight")
                .unwrap()
                .1
                .iter_mut()
                .for_each(|x| *x = 0.0)
        },
        41,
    );
    let tokens = stream(1000, 300);
    let report = perplexity(&model, &tokens, 64, None, Par::rayon(0), &mut |_, _| {}).unwrap();
    assert_eq!(report.windows, 1000 / 64);
    assert_eq!(report.tokens_scored, 15 * 63);
    assert!(
        (report.ppl - 300.0).abs() < 300.0 * 1e-6,
        "ppl {}",
        report.ppl
    );
    assert!(
        report
            .window_nll
            .iter()
            .all(|&n| (n - 300f64.ln()).abs() < 1e-6)
    );
    assert!(report.seconds > 0.0 && report.tokens_per_second > 0.0);
}

#[test]
fn perplexity_matches_naive_cross_entropy() {
    let (_dir, weights, model) = load(&TINY, |_| {}, 42);
    let seqlen = 300; // longer than the 256 rows scored at a time
    let tokens = stream(3 * seqlen + 17, 300);
    let mut calls = Vec::new();
    let report = perplexity(
        &model,
        &tokens,
        seqlen,
        Some(2),
        Par::rayon(0),
        &mut |done, total| calls.push((done, total)),
    )
    .unwrap();
    assert_eq!(calls, vec![(1, 2), (2, 2)]);
    assert_eq!(report.windows, 2);
    assert_eq!(report.tokens_scored, 2 * (seqlen - 1));
    // Naive: per window, mean over positions p < seqlen-1 of
    // log(sum_v exp z_p[v]) - z_p[token_{p+1}], with z from the f64 reference.
    let mut nll = Vec::new();
    for w in 0..2 {
        let window = &tokens[w * seqlen..(w + 1) * seqlen];
        let logits = reference_forward(&TINY, &weights, window).logits;
        let mut total = 0.0;
        for p in 0..seqlen - 1 {
            let z = &logits[p];
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            total += lse - z[window[p + 1] as usize];
        }
        nll.push(total / (seqlen - 1) as f64);
    }
    for (a, b) in report.window_nll.iter().zip(&nll) {
        assert!(
            (a - b).abs() < 1e-4 * b.abs(),
            "window nll {a} vs naive {b}"
        );
    }
    let ppl = ((nll[0] + nll[1]) / 2.0).exp();
    assert!(
        (report.ppl - ppl).abs() < 1e-4 * ppl,
        "ppl {} vs naive {ppl}",
        report.ppl
    );
    // Without a limit every full window is used; the remainder is dropped.
    let all = perplexity(&model, &tokens, seqlen, None, Par::rayon(0), &mut |_, _| {}).unwrap();
    assert_eq!(all.windows, 3);
    assert_eq!(&all.window_nll[..2], &report.window_nll[..]);
}

/// llama.cpp's protocol: only the second half of each window is scored, against the
/// same naive f64 reference.
#[test]
fn perplexity_from_scores_only_the_positions_asked_for() {
    let (_dir, weights, model) = load(&TINY, |_| {}, 44);
    let seqlen = 40;
    let first = seqlen / 2;
    let tokens = stream(2 * seqlen, 300);
    let report = llama_io::perplexity_from(
        &model,
        &tokens,
        seqlen,
        None,
        first,
        Par::Seq,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.tokens_scored, 2 * (seqlen - 1 - first));
    for w in 0..2 {
        let window = &tokens[w * seqlen..(w + 1) * seqlen];
        let logits = reference_forward(&TINY, &weights, window).logits;
        let naive = (first..seqlen - 1)
            .map(|p| {
                let z = &logits[p];
                z.iter().map(|v| v.exp()).sum::<f64>().ln() - z[window[p + 1] as usize]
            })
            .sum::<f64>()
            / (seqlen - 1 - first) as f64;
        let got = report.window_nll[w];
        assert!((got - naive).abs() < 1e-4 * naive.abs(), "{got} vs {naive}");
    }
    // Nothing left to score is an error.
    let none = llama_io::perplexity_from(
        &model,
        &tokens,
        seqlen,
        None,
        seqlen - 1,
        Par::Seq,
        &mut |_, _| {},
    );
    assert!(none.is_err());
}

#[test]
fn perplexity_argument_errors() {
    let (_dir, _w, model) = load(&TINY, |_| {}, 43);
    let tokens = stream(100, 300);
    assert!(
        perplexity(&model, &tokens, 1, None, Par::rayon(0), &mut |_, _| {}).is_err(),
        "seqlen 1"
    );
    assert!(
        perplexity(&model, &tokens, 101, None, Par::rayon(0), &mut |_, _| {}).is_err(),
        "no full window"
    );
    assert!(
        perplexity(&model, &tokens, 10, Some(0), Par::rayon(0), &mut |_, _| {}).is_err(),
        "zero windows"
    );
    assert!(
        perplexity(
            &model,
            &[5, 400, 7, 8],
            2,
            None,
            Par::rayon(0),
            &mut |_, _| {}
        )
        .is_err(),
        "token id out of range"
    );
}

#[test]
fn calibration_sampler_errors() {
    let tokens = stream(100, 300);
    assert!(
        sample_calibration(&tokens, 4, 100, 0).is_err(),
        "needs seqlen + 1 tokens"
    );
    assert!(sample_calibration(&tokens, 4, 99, 0).is_ok());
    assert!(sample_calibration(&tokens, 0, 10, 0).is_err());
    assert!(sample_calibration(&tokens, 4, 0, 0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Windows are contiguous slices of the text, start at most at
    /// `len - seqlen - 1`, and depend only on the seed.
    #[test]
    fn calibration_windows_are_seeded_slices(len in 2usize..400, n in 1usize..20, frac in 0.0f64..1.0, seed in any::<u64>()) {
        let seqlen = 1 + ((len - 2) as f64 * frac) as usize;
        let tokens: Vec<u32> = (0..len as u32).collect(); // token = its position
        let a = sample_calibration(&tokens, n, seqlen, seed).unwrap();
        prop_assert_eq!(&a, &sample_calibration(&tokens, n, seqlen, seed).unwrap());
        prop_assert_eq!(a.len(), n);
        for w in &a {
            prop_assert_eq!(w.len(), seqlen);
            let start = w[0] as usize;
            prop_assert!(start + seqlen < len, "start {start} leaves no token after the window");
            prop_assert!(w.iter().enumerate().all(|(i, &t)| t as usize == start + i));
        }
    }

    /// Different seeds give different windows when there is room to differ.
    #[test]
    fn calibration_seeds_differ(seed in any::<u64>()) {
        let tokens: Vec<u32> = (0..10_000).collect();
        let a = sample_calibration(&tokens, 8, 16, seed).unwrap();
        let b = sample_calibration(&tokens, 8, 16, seed.wrapping_add(1)).unwrap();
        prop_assert_ne!(a, b);
    }
}
