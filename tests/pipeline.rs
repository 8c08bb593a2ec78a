//! The pipeline end to end on tiny generated models: every method and bit setting runs,
//! quantized weights lie on grids, MagR lowers the layer loss of RTN, the output is
//! deterministic, bad settings are errors.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{tiny_model, windows};
use faer::Par;
use magr::llama_io::{LinearKind, Model};
use magr::quantizers::GridSpec;
use magr::{
    Identity, MagrSettings, Method, OptqCdMethod, OptqMethod, PipelineError, PipelineSettings,
    Preprocessor, RtnMethod, Windows, quantize_model,
};

fn settings(
    spec: GridSpec,
    method: Arc<dyn Method>,
    magr: Option<MagrSettings>,
) -> PipelineSettings {
    PipelineSettings {
        method,
        preprocessor: match magr {
            Some(m) => Arc::new(m) as Arc<dyn Preprocessor>,
            None => Arc::new(Identity),
        },
        batch: 3,
        ..PipelineSettings::new(spec, Par::Seq)
    }
}

/// Distinct values per output channel (per group with groups, the last one maybe
/// shorter) are at most `2^bits`.
fn assert_on_grids(model: &Model, spec: GridSpec) {
    for block in 0..model.num_blocks() {
        for kind in LinearKind::ALL {
            let (outputs, inputs) = model.linear_shape(kind);
            let w = model.linear_weight(block, kind).unwrap();
            let group = spec.group_size().unwrap_or(inputs);
            for j in 0..outputs {
                let row = &w[j * inputs..(j + 1) * inputs];
                for (g, chunk) in row.chunks(group).enumerate() {
                    let values: BTreeSet<u32> = chunk.iter().map(|v| v.to_bits()).collect();
                    assert!(
                        values.len() <= 1 << spec.bits(),
                        "block {block} {kind:?} output {j} group {g}: {} values",
                        values.len()
                    );
                }
            }
        }
    }
}

#[test]
fn every_method_and_bit_setting_runs_and_lands_on_grids() {
    let calibration = windows(6, 32, 1);
    let magr = |spec: &GridSpec| {
        Some(MagrSettings {
            iterations: 20,
            ..MagrSettings::reference(spec)
        })
    };
    for (bits, group) in [
        (2, Some(32)),
        (3, None),
        (4, None),
        (4, Some(16)),
        (8, None),
    ] {
        let spec = GridSpec::reference(bits, group).unwrap();
        let methods: [Arc<dyn Method>; 3] = [
            Arc::new(RtnMethod),
            Arc::new(OptqMethod),
            Arc::new(OptqCdMethod {
                sweeps: 2,
                lambda: Some(0.0),
            }),
        ];
        for method in methods {
            for with_magr in [false, true] {
                let mut model = tiny_model(7);
                let s = settings(
                    spec,
                    method.clone(),
                    if with_magr { magr(&spec) } else { None },
                );
                let report = quantize_model(&mut model, &calibration, &s, &mut |_| {}).unwrap();
                assert_eq!(report.layers.len(), 2 * 7);
                assert_eq!(report.calibration, [6, 32]);
                assert!(
                    report
                        .layers
                        .iter()
                        .all(|l| l.layer_loss.is_finite() && l.layer_loss >= 0.0)
                );
                assert_eq!(
                    report.layers.iter().all(|l| l.preprocess.is_some()),
                    with_magr
                );
                if with_magr {
                    // MagR never increases the largest weight of a layer.
                    assert!(
                        report
                            .layers
                            .iter()
                            .all(|l| l.max_abs_after <= l.max_abs_before)
                    );
                }
                assert_on_grids(&model, spec);
            }
        }
    }
}

#[test]
fn magr_lowers_the_layer_loss_of_rtn_on_correlated_inputs() {
    let calibration = windows(8, 32, 2);
    for bits in [3, 4] {
        let spec = GridSpec::reference(bits, None).unwrap();
        let total = |magr: Option<MagrSettings>| {
            let mut model = tiny_model(11);
            let report = quantize_model(
                &mut model,
                &calibration,
                &settings(spec, Arc::new(RtnMethod), magr),
                &mut |_| {},
            )
            .unwrap();
            report.layers.iter().map(|l| l.layer_loss).sum::<f64>()
        };
        let rtn = total(None);
        let magr_rtn = total(Some(MagrSettings::reference(&spec)));
        assert!(
            magr_rtn < rtn,
            "{bits} bits: MagR+RTN {magr_rtn} vs RTN {rtn}"
        );
    }
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let calibration = windows(5, 24, 3);
    let spec = GridSpec::reference(3, Some(16)).unwrap();
    let s = PipelineSettings {
        act_order: true,
        par: Par::rayon(2),
        ..settings(
            spec,
            Arc::new(OptqMethod),
            Some(MagrSettings {
                windows: Windows::Last,
                ..MagrSettings::fista(&spec)
            }),
        )
    };
    let run = || {
        let mut model = tiny_model(5);
        quantize_model(&mut model, &calibration, &s, &mut |_| {}).unwrap();
        model
            .hf_tensors()
            .unwrap()
            .into_iter()
            .flat_map(|(_, _, d)| d.to_vec())
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_calibration_and_settings_are_errors() {
    let spec = GridSpec::reference(4, None).unwrap();
    let mut model = tiny_model(1);
    let s = settings(spec, Arc::new(RtnMethod), None);
    assert!(matches!(
        quantize_model(&mut model, &[], &s, &mut |_| {}),
        Err(PipelineError::Calibration(_))
    ));
    let uneven = vec![vec![1u32; 8], vec![2u32; 9]];
    assert!(matches!(
        quantize_model(&mut model, &uneven, &s, &mut |_| {}),
        Err(PipelineError::Calibration(_))
    ));
    let zero_batch = PipelineSettings {
        batch: 0,
        ..s.clone()
    };
    assert!(matches!(
        quantize_model(&mut model, &windows(2, 8, 1), &zero_batch, &mut |_| {}),
        Err(PipelineError::Settings(_))
    ));
    // A group size that divides neither the hidden size (64) nor the MLP width (128)
    // leaves the last group of each row shorter (16 and 32 inputs).
    let ragged = GridSpec::reference(4, Some(48)).unwrap();
    let mut ragged_model = tiny_model(3);
    let s48 = settings(ragged, Arc::new(OptqMethod), None);
    quantize_model(&mut ragged_model, &windows(2, 8, 1), &s48, &mut |_| {}).unwrap();
    assert_on_grids(&ragged_model, ragged);
    let out_of_vocab = vec![vec![400u32; 8]];
    assert!(quantize_model(&mut model, &out_of_vocab, &s, &mut |_| {}).is_err());
}

/// Settings chosen per layer: each layer tries every setting (MagR's alphas and `H`
/// windows, the grid's shrink factor), each fitted (MagR, then the quantizer; RTN here) on
/// the windows not held out and scored on the held-out ones (every 4th window: here
/// windows 3 and 7, in the second and third batch of 3), and takes the smallest score. A
/// last-window setting is fitted on the last window not held out (window 6). For block
/// 0's layers (whose inputs are the float model's) every score is recomputed here from
/// the captured inputs: `H` of the fitting tokens summed in f64, the held-out loss as
/// `sum_t ||x_t (W0 - Q)||^2` over the held-out tokens.
fn check_choices_by_the_held_out_loss(magr: MagrSettings, beta_choices: &[f32]) {
    use magr::candle_core::Tensor;
    use magr::llama_io::LinearInput;
    use magr::quantizers::LayerProblem;
    use magr::{
        ALPHA_FACTORS, ComputeBackend, Cpu, HESSIAN_CHOICES, HiddenStates, PreprocessContext,
        QuantizerContext,
    };

    let (count, len) = (8, 16);
    let calibration = windows(count, len, 31);
    let spec = GridSpec::reference(3, None).unwrap();
    // RTN: OPTQ's codes can flip under the rounding of another summation of `H`.
    let s = PipelineSettings {
        beta_choices: beta_choices.to_vec(),
        ..settings(spec, Arc::new(RtnMethod), Some(magr))
    };
    let mut model = tiny_model(32);
    let float = tiny_model(32);
    let report = quantize_model(&mut model, &calibration, &s, &mut |_| {}).unwrap();
    assert!(report.layers.iter().all(|l| l.choice.is_some()));

    // Every setting, in the order tried: alpha, then windows, then beta.
    let alphas: Vec<f64> = match magr.alpha_per_layer {
        true => ALPHA_FACTORS.iter().map(|f| f * magr.alpha).collect(),
        false => vec![magr.alpha],
    };
    let hessians: &[Windows] = match magr.windows_per_layer {
        true => &HESSIAN_CHOICES,
        false => std::slice::from_ref(&magr.windows),
    };
    let betas: Vec<Option<f32>> = match beta_choices.is_empty() {
        true => vec![None],
        false => beta_choices.iter().copied().map(Some).collect(),
    };
    let mut expected = Vec::new();
    for &alpha in &alphas {
        for (k, &windows) in hessians.iter().enumerate() {
            // Alpha 0 leaves W0 whatever the H: tried once.
            if alpha != 0.0 || k == 0 {
                expected.extend(betas.iter().map(|&beta| (alpha, windows, beta)));
            }
        }
    }

    // Block 0's inputs, token rows in window order.
    let mut inputs: Vec<(LinearInput, Vec<f32>, usize)> = Vec::new();
    let hidden = float.embed(&calibration).unwrap();
    let mut sink = |input: LinearInput, x: &Tensor| {
        let width = x.dim(1)?;
        inputs.push((input, x.flatten_all()?.to_vec1()?, width));
        Ok(())
    };
    float
        .run_block_capturing(0, &hidden, Par::Seq, &mut sink)
        .unwrap();
    let held = |token: usize| (token / len) % 4 == 3;
    for record in report.layers.iter().filter(|l| l.block == 0) {
        let kind = *LinearKind::ALL
            .iter()
            .find(|k| k.hf_suffix() == record.layer)
            .unwrap();
        let (x, width) = inputs
            .iter()
            .find(|(input, ..)| *input == kind.input())
            .map(|(_, x, w)| (x, *w))
            .unwrap();
        let tokens = x.len() / width;
        assert_eq!(tokens, count * len);
        // The H that a setting is fitted on, by the library's accumulator over the
        // windows chosen here, batched as the run batches them (3 windows; a held-out
        // window alone), so that MagR's result and RTN's codes see the same rounding.
        let h_windows = |batches: &[&[usize]]| {
            let hidden = HiddenStates::resident(
                (batches.iter())
                    .map(|b| {
                        let b: Vec<Vec<u32>> = b.iter().map(|&i| calibration[i].clone()).collect();
                        float.embed(&b).unwrap()
                    })
                    .collect(),
            );
            (Cpu.hessians(&float, 0, &hidden, &[kind.input()], Windows::All, Par::Seq))
                .unwrap()
                .remove(0)
        };
        // All windows: H_all - H_held (as the contract says); the last window: the last
        // not held out, window 6.
        let h_fit = |windows: Windows| match windows {
            Windows::All => {
                h_windows(&[&[0, 1, 2], &[3, 4, 5], &[6, 7]]) - h_windows(&[&[3], &[7]])
            }
            _ => h_windows(&[&[6]]),
        };
        let (outputs, n_in) = float.linear_shape(kind);
        let w = float.linear_weight(0, kind).unwrap();
        let w0 = faer::Mat::from_fn(n_in, outputs, |i, j| w[j * n_in + i]);
        let context = PreprocessContext {
            spec,
            par: Par::Seq,
            backend: &Cpu,
        };
        let choice = record.choice.as_ref().unwrap();
        assert_eq!(choice.tried.len(), expected.len());
        let mut losses = Vec::new();
        for (&(alpha, windows, beta), tried) in expected.iter().zip(&choice.tried) {
            assert_eq!(tried.parameters["alpha"], alpha);
            let hessian = match windows {
                Windows::All => "all windows",
                _ => "last window",
            };
            assert_eq!(tried.parameters["hessian"], hessian);
            let decimal = beta.map(|b| b.to_string().parse::<f64>().unwrap());
            assert_eq!(
                tried.parameters.get("beta").map(|b| b.as_f64().unwrap()),
                decimal
            );
            let fixed = MagrSettings {
                alpha,
                alpha_per_layer: false,
                windows,
                windows_per_layer: false,
                ..magr
            };
            let h = h_fit(windows);
            let pre = fixed.apply(w0.as_ref(), h.as_ref(), &context).unwrap();
            let weights = pre.weights.unwrap();
            let problem =
                LayerProblem::new(weights.as_ref(), h.as_ref()).with_original(w0.as_ref());
            let spec = beta.map_or(spec, |b| GridSpec::new(3, None, false, b).unwrap());
            let quantizer = RtnMethod.quantizer(&QuantizerContext {
                spec,
                act_order: false,
                par: Par::Seq,
                backend: &Cpu,
            });
            let q = quantizer.quantize(&problem).unwrap().into_dequantized();
            let loss: f64 = (0..tokens)
                .filter(|&t| held(t))
                .map(|t| {
                    (0..outputs)
                        .map(|j| {
                            let e: f64 = (0..n_in)
                                .map(|i| {
                                    f64::from(x[t * width + i]) * f64::from(w0[(i, j)] - q[(i, j)])
                                })
                                .sum();
                            e * e
                        })
                        .sum::<f64>()
                })
                .sum();
            assert!(
                approx::relative_eq!(tried.held_out_loss, loss, max_relative = 1e-4),
                "{} {:?}: {} against {loss}",
                record.layer,
                tried.parameters,
                tried.held_out_loss
            );
            losses.push(loss);
        }
        let best = (0..losses.len())
            .min_by(|&a, &b| {
                choice.tried[a]
                    .held_out_loss
                    .total_cmp(&choice.tried[b].held_out_loss)
            })
            .unwrap();
        assert_eq!(choice.chosen, best, "{}: {losses:?}", record.layer);
    }
}

/// `--alpha auto`: 0, 1/2, 1, 2, 4, 8, 16 times the reference alpha.
#[test]
fn alpha_auto_chooses_each_layer_by_the_held_out_loss() {
    let spec = GridSpec::reference(3, None).unwrap();
    let magr = MagrSettings {
        alpha_per_layer: true,
        iterations: 20,
        ..MagrSettings::fista(&spec)
    };
    check_choices_by_the_held_out_loss(magr, &[]);
}

/// `--alpha auto --magr-hessian auto --beta auto`: every alpha with both `H`s (alpha 0
/// once) and each shrink factor (two of them here).
#[test]
fn alpha_hessian_and_beta_are_chosen_together_by_the_held_out_loss() {
    let spec = GridSpec::reference(3, None).unwrap();
    let magr = MagrSettings {
        alpha_per_layer: true,
        windows_per_layer: true,
        iterations: 20,
        ..MagrSettings::fista(&spec)
    };
    check_choices_by_the_held_out_loss(magr, &[1.0, 0.8]);
}

/// A last-window `H` chosen per layer is fitted again on the last window (here window 7,
/// which is held out while choosing), and the shrink factor alone can be chosen without
/// MagR.
#[test]
fn a_chosen_setting_is_fitted_again_on_its_own_windows() {
    let (count, len) = (8, 16);
    let calibration = windows(count, len, 31);
    let spec = GridSpec::reference(3, None).unwrap();
    let last = MagrSettings {
        windows: Windows::Last,
        iterations: 20,
        ..MagrSettings::fista(&spec)
    };
    let choose = MagrSettings {
        windows_per_layer: true,
        ..last
    };
    let run = |magr: MagrSettings, betas: &[f32]| {
        let s = PipelineSettings {
            beta_choices: betas.to_vec(),
            ..settings(spec, Arc::new(RtnMethod), Some(magr))
        };
        let mut model = tiny_model(32);
        let report = quantize_model(&mut model, &calibration, &s, &mut |_| {}).unwrap();
        let bits: Vec<u32> = (model.hf_tensors().unwrap().into_iter())
            .flat_map(|(_, _, d)| d.to_vec())
            .map(f32::to_bits)
            .collect();
        (bits, report)
    };
    // Only the last window's H on offer: the chosen setting's weights are the plain
    // last-window run's.
    let (fixed, _) = run(last, &[]);
    let (chosen, report) = run(
        MagrSettings {
            windows_per_layer: false,
            ..choose
        },
        &[spec.beta()],
    );
    assert!(report.layers.iter().all(|l| l.choice.is_some()));
    assert_eq!(fixed, chosen);
    // Both H on offer: each layer tries the two.
    let (_, report) = run(choose, &[]);
    assert!(
        report
            .layers
            .iter()
            .all(|l| l.choice.as_ref().is_some_and(|c| c.tried.len() == 2))
    );

    // Without MagR: the shrink factor alone.
    let s = PipelineSettings {
        beta_choices: vec![1.0, 0.9, 0.8],
        ..settings(spec, Arc::new(OptqMethod), None)
    };
    let mut model = tiny_model(32);
    let report = quantize_model(&mut model, &calibration, &s, &mut |_| {}).unwrap();
    for l in &report.layers {
        let c = l.choice.as_ref().unwrap();
        let betas: Vec<_> = c
            .tried
            .iter()
            .map(|t| t.parameters["beta"].as_f64())
            .collect();
        assert_eq!(betas, [Some(1.0), Some(0.9), Some(0.8)]);
    }
    assert_on_grids(&model, spec);
}

/// Settings chosen per layer need four windows (one is held out); the shrink factor is
/// not chosen on GGUF grids.
#[test]
fn choices_need_four_windows_and_no_gguf_grid() {
    let spec = GridSpec::reference(3, None).unwrap();
    let auto = MagrSettings {
        alpha_per_layer: true,
        ..MagrSettings::fista(&spec)
    };
    let s = settings(spec, Arc::new(OptqMethod), Some(auto));
    let mut model = tiny_model(33);
    let e = quantize_model(&mut model, &windows(3, 16, 1), &s, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("held out") && e.contains("4 calibration windows"),
        "{e}"
    );

    let gguf = GridSpec::ggml(
        quantizers::GgmlBlockType::Q4_0,
        quantizers::GridFit::Weighted,
    );
    let s = PipelineSettings {
        beta_choices: vec![1.0, 0.9],
        ..settings(gguf, Arc::new(OptqMethod), None)
    };
    let e = s
        .check(tiny_model(33).config(), 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shrink factor") && e.contains("GGUF"), "{e}");
}
