//! The candle backend on candle's CPU device computes what the faer backend computes:
//! MagR's result (plain and FISTA) within f32 rounding of another summation order, per
//! channel and per group (ragged groups too), and a whole pipeline run with nearly the
//! same losses.

mod common;

use std::sync::Arc;

use candle_core::Device;
use common::{tiny_model, windows};
use faer::{Mat, Par};
use magr::prox_opt::{Grouping, MagrOptions, Solver};
use magr::quantizers::{GridSpec, LayerProblem, Optq, Quantizer};
use magr::{CandleBackend, ComputeBackend, Cpu, PipelineSettings, quantize_model};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

/// A layer: `W0` (in x out) with a few large weights and `H = X^T X` from 3 `in` tokens.
fn layer(inputs: usize, outputs: usize, seed: u64) -> (Mat<f32>, Mat<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let w0 = Mat::from_fn(inputs, outputs, |_, _| {
        let x: f32 = rng.sample(StandardNormal);
        if rng.random::<f32>() < 0.02 {
            8.0 * x
        } else {
            x
        }
    });
    let x = Mat::from_fn(3 * inputs, inputs, |_, _| {
        rng.sample::<f32, _>(StandardNormal)
    });
    let h = x.transpose() * &x;
    // Exactly symmetric, as the pipeline's H is.
    let h = Mat::from_fn(
        inputs,
        inputs,
        |i, k| if i >= k { h[(i, k)] } else { h[(k, i)] },
    );
    (w0, h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Both solvers, with and without the objective test, while both restart alike: the
    /// same iterations, 1e-5 of max |W0| per weight and 1e-5 relative on the objective
    /// and on every traced objective (f32 products summed in another order; thresholds
    /// in f64 on both).
    #[test]
    fn candle_magr_matches_the_faer_magr(
        inputs in 8usize..48,
        outputs in 1usize..12,
        group in prop_oneof![Just(None), (3usize..20).prop_map(Some)],
        alpha in prop_oneof![Just(1e-3), Just(1e-2), Just(1e-1)],
        solver in prop_oneof![Just(Solver::Plain), Just(Solver::Fista)],
        objective_tol in prop_oneof![Just(0.0), Just(1e-3)],
        seed in 0u64..1000,
    ) {
        let (w0, h) = layer(inputs, outputs, seed);
        let options = MagrOptions {
            alpha,
            iterations: 40,
            objective_tol,
            solver,
            record_trace: true,
            grouping: group.map_or(Grouping::PerChannel, Grouping::PerGroup),
            par: Par::Seq,
        };
        let candle = CandleBackend::new(Device::Cpu);
        let run = |iterations: usize| {
            let options = MagrOptions { iterations, ..options };
            let faer = Cpu.magr(w0.as_ref(), h.as_ref(), &options).unwrap();
            (faer, candle.magr(w0.as_ref(), h.as_ref(), &options).unwrap())
        };
        // Compared over the iterations where both restarted alike: FISTA's restart
        // compares two objectives, and where they tie to f32 noise the backends may
        // decide it differently and part by a momentum step (to meet again at the
        // minimizer, F being strictly convex here).
        let alike = (1..=options.iterations)
            .take_while(|&k| {
                let ((_, want), (_, report)) = run(k);
                report.restarts == want.restarts
            })
            .last()
            .unwrap_or(0);
        let ((expected, want), (got, report)) = run(alike);
        prop_assert_eq!(report.iterations, want.iterations);
        let scale = want.max_abs_before.iter().fold(0.0f32, |m, &x| m.max(x));
        for j in 0..outputs {
            for i in 0..inputs {
                prop_assert!(
                    (got[(i, j)] - expected[(i, j)]).abs() <= 1e-5 * scale,
                    "W[{i}, {j}] after {alike} iterations: candle {} faer {}",
                    got[(i, j)], expected[(i, j)]
                );
            }
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-12);
        prop_assert!(
            close(report.objective_after, want.objective_after),
            "objective: candle {} faer {}", report.objective_after, want.objective_after
        );
        let (got_trace, want_trace) = (report.trace.unwrap(), want.trace.unwrap());
        prop_assert_eq!(got_trace.len(), want_trace.len());
        for (k, (a, b)) in got_trace.iter().zip(&want_trace).enumerate() {
            prop_assert!(close(*a, *b), "F after {k} iterations: candle {a} faer {b}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// OPTQ's column loop on the device: the same codes as the host's loop but where the
    /// lazy block product, summed in another order, moves a weight across a rounding
    /// boundary (at most 1% of them here), and the layer loss within 1e-3 relative.
    #[test]
    fn candle_optq_matches_the_faer_optq(
        inputs in 8usize..70,
        outputs in 1usize..10,
        bits in 2u32..5,
        act_order in any::<bool>(),
        block_size in prop_oneof![Just(128usize), 3usize..16],
        seed in 0u64..1000,
    ) {
        let (w0, h) = layer(inputs, outputs, seed);
        let optq = Optq {
            act_order,
            block_size,
            par: Par::Seq,
            ..Optq::new(GridSpec::reference(bits, None).unwrap())
        };
        let problem = LayerProblem::new(w0.as_ref(), h.as_ref());
        let want = optq.quantize(&problem).unwrap();
        let candle = CandleBackend::new(Device::Cpu);
        let got = candle.optq(optq).quantize(&problem).unwrap();
        let differ = (0..outputs)
            .flat_map(|j| (0..inputs).map(move |i| (i, j)))
            .filter(|&(i, j)| got.code(i, j) != want.code(i, j))
            .count();
        prop_assert!(differ * 100 <= inputs * outputs, "{differ} codes differ");
        let (a, b) = (got.layer_loss(), want.layer_loss());
        prop_assert!((a - b).abs() <= 1e-3 * b.max(1e-12), "loss: candle {a} faer {b}");
    }
}

#[test]
fn candle_optq_rounds_ties_to_even_as_the_host() {
    // 4 bits over [0, 15] (or [-15, 0]): the grid's step is 1, and with `H = I` nothing
    // is spread, so the weights on half steps are all ties.
    let column = [0.0, 15.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5];
    let w0 = Mat::from_fn(8, 2, |i, j| column[i] * if j == 0 { 1.0 } else { -1.0 });
    let h = Mat::<f32>::identity(8, 8);
    let optq = Optq {
        par: Par::Seq,
        ..Optq::new(GridSpec::reference(4, None).unwrap())
    };
    let problem = LayerProblem::new(w0.as_ref(), h.as_ref());
    let want = optq.quantize(&problem).unwrap();
    let got = CandleBackend::new(Device::Cpu)
        .optq(optq)
        .quantize(&problem)
        .unwrap();
    for j in 0..2 {
        for i in 0..8 {
            assert_eq!(
                got.code(i, j),
                want.code(i, j),
                "({i}, {j}): {}",
                w0[(i, j)]
            );
        }
    }
}

#[test]
fn a_run_on_the_candle_backend_matches_the_cpu_run() {
    let calibration = windows(4, 24, 5);
    let spec = GridSpec::reference(3, None).unwrap();
    let cpu = PipelineSettings::new(spec, Par::Seq);
    let candle = PipelineSettings {
        backend: Arc::new(CandleBackend::new(Device::Cpu)),
        ..cpu.clone()
    };
    let (mut a, mut b) = (tiny_model(9), tiny_model(9));
    let want = quantize_model(&mut a, &calibration, &cpu, &mut |_| {}).unwrap();
    let got = quantize_model(&mut b, &calibration, &candle, &mut |_| {}).unwrap();
    assert_eq!(got.layers.len(), want.layers.len());
    approx::assert_relative_eq!(
        got.summed_layer_loss(),
        want.summed_layer_loss(),
        max_relative = 1e-3
    );
    let record = candle.record("c.txt".into(), 4, 24, 0);
    assert_eq!(record.backend, "candle-cpu");
}
