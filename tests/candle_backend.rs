//! The candle backend on candle's CPU device computes what the faer backend computes:
//! MagR's result within f32 rounding of another summation order, per channel and per
//! group (ragged groups too), and a whole pipeline run with nearly the same losses.

mod common;

use std::sync::Arc;

use candle_core::Device;
use common::{tiny_model, windows};
use faer::{Mat, Par};
use magr::prox_opt::{Grouping, MagrOptions};
use magr::quantizers::GridSpec;
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
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Tolerance: 1e-5 of max |W0| per weight after 20 iterations, 1e-5 relative on the
    /// objective (f32 products summed in another order; thresholds in f64 on both).
    #[test]
    fn candle_magr_matches_the_faer_magr(
        inputs in 8usize..48,
        outputs in 1usize..12,
        group in prop_oneof![Just(None), (3usize..20).prop_map(Some)],
        alpha in prop_oneof![Just(1e-3), Just(1e-2), Just(1e-1)],
        seed in 0u64..1000,
    ) {
        let (w0, h) = layer(inputs, outputs, seed);
        let options = MagrOptions {
            alpha,
            iterations: 20,
            grouping: group.map_or(Grouping::PerChannel, Grouping::PerGroup),
            par: Par::Seq,
            ..MagrOptions::per_channel()
        };
        let (expected, want) = Cpu.magr(w0.as_ref(), h.as_ref(), &options).unwrap();
        let candle = CandleBackend::new(Device::Cpu);
        let (got, report) = candle.magr(w0.as_ref(), h.as_ref(), &options).unwrap();
        let scale = want.max_abs_before.iter().fold(0.0f32, |m, &x| m.max(x));
        for j in 0..outputs {
            for i in 0..inputs {
                prop_assert!(
                    (got[(i, j)] - expected[(i, j)]).abs() <= 1e-5 * scale,
                    "W[{i}, {j}]: candle {} faer {}", got[(i, j)], expected[(i, j)]
                );
            }
        }
        prop_assert_eq!(report.iterations, 20);
        prop_assert!(
            (report.objective_after - want.objective_after).abs()
                <= 1e-5 * want.objective_after.abs().max(1e-12),
            "objective: candle {} faer {}", report.objective_after, want.objective_after
        );
    }
}

#[test]
fn what_the_candle_backend_does_not_run_is_a_named_error() {
    let (w0, h) = layer(16, 4, 1);
    let candle = CandleBackend::new(Device::Cpu);
    for options in [
        MagrOptions::per_channel().fista(),
        MagrOptions {
            record_trace: true,
            ..MagrOptions::per_channel()
        },
    ] {
        let err = candle
            .magr(w0.as_ref(), h.as_ref(), &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("candle-cpu") && err.contains("plain"), "{err}");
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
