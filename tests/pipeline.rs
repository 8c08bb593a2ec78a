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
