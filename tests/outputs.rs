//! The outputs of a run on tiny generated models: the fake-quant directory loads back
//! with the quantized weights, the packed GPTQ checkpoint dequantizes to exactly those
//! weights, a run resumed from its checkpoint gives the same bytes, and the true-sequential
//! order runs and lands on grids.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{tiny_model, windows};
use faer::Par;
use magr::llama_io::{
    GgufFloat, LinearKind, Model, NamedTensor, TensorData, WeightDtype, write_hf_dir,
};
use magr::magr_report::{PipelineReport, RunReport};
use magr::quantizers::{GgmlBlockType, GridFit};
use magr::quantizers::{GptqTensors, GridSpec, QuantizedLinear, ZeroFormat, dequantize_gptq};
use magr::run::{RunEvents, Staging, run_pipeline, write_outputs};
use magr::{
    FormatContext, FormatState, GGUF_FILE, GgufFormat, GgufPreset, GptqFormat, HiddenDtype,
    Identity, MagrSettings, Method, OptqCdMethod, OptqMethod, OutputFormat, PipelineError,
    PipelineSettings, Progress, RtnMethod, RunCheckpoint, continue_quantize_model, quantize_model,
    run_fingerprint,
};
use safetensors::{Dtype, SafeTensors};

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("magr-outputs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn settings(
    spec: GridSpec,
    method: Arc<dyn Method>,
    magr: bool,
    act_order: bool,
) -> PipelineSettings {
    PipelineSettings {
        method,
        preprocessor: if magr {
            Arc::new(MagrSettings {
                iterations: 10,
                ..MagrSettings::reference(&spec)
            })
        } else {
            Arc::new(Identity)
        },
        act_order,
        batch: 2,
        ..PipelineSettings::new(spec, Par::Seq)
    }
}

/// The GPTQ format of a run on `spec`, float tensors in f32.
fn gptq_format(spec: GridSpec, act_order: bool) -> GptqFormat {
    GptqFormat::new(&FormatContext {
        spec,
        gguf_preset: None,
        act_order,
        damping: Some(0.01),
        dtype: WeightDtype::F32,
        gguf_float: GgufFloat::F32,
    })
    .unwrap()
}

fn weight_bits(model: &Model) -> Vec<u32> {
    model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .flat_map(|(_, _, d)| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        .collect()
}

/// The layer tensors of a written GPTQ directory, as a loader reads them.
fn read_gptq_layer(
    file: &SafeTensors<'_>,
    block: usize,
    kind: LinearKind,
    bits: u32,
    format: ZeroFormat,
    model: &Model,
) -> GptqTensors {
    let module = kind.hf_name(block).trim_end_matches(".weight").to_string();
    let tensor = |suffix: &str, dtype: Dtype| {
        let t = file.tensor(&format!("{module}.{suffix}")).unwrap();
        assert_eq!(t.dtype(), dtype, "{module}.{suffix}");
        (t.shape().to_vec(), t.data().to_vec())
    };
    let i32s = |bytes: Vec<u8>| -> Vec<i32> {
        bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (outputs, inputs) = model.linear_shape(kind);
    let (scales_shape, scales) = tensor("scales", Dtype::F16);
    let (qweight_shape, qweight) = tensor("qweight", Dtype::I32);
    let (_, qzeros) = tensor("qzeros", Dtype::I32);
    let (g_idx_shape, g_idx) = tensor("g_idx", Dtype::I32);
    assert_eq!(qweight_shape, [inputs * bits as usize / 32, outputs]);
    assert_eq!(scales_shape[1], outputs);
    assert_eq!(g_idx_shape, [inputs]);
    GptqTensors {
        bits,
        inputs,
        outputs,
        groups: scales_shape[0],
        qweight: i32s(qweight),
        format,
        qzeros: i32s(qzeros),
        scales: scales
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        g_idx: i32s(g_idx),
    }
}

#[test]
fn outputs_load_back_and_the_packed_checkpoint_unpacks_to_the_fake_quant_weights() {
    let dir = scratch("gptq");
    let calibration = windows(4, 32, 1);
    for (n, (bits, group, symmetric, act_order, method, magr)) in [
        (
            4,
            None,
            false,
            false,
            Arc::new(OptqMethod) as Arc<dyn Method>,
            true,
        ),
        (3, None, false, true, Arc::new(RtnMethod), true),
        (2, Some(32), false, true, Arc::new(OptqMethod), false),
        (3, Some(16), true, false, Arc::new(OptqMethod), true),
        (8, None, false, false, Arc::new(RtnMethod), false),
        // Groups of 48 on 64 and 128 inputs: a shorter last group (MagR per group too).
        (4, Some(48), false, false, Arc::new(OptqMethod), true),
        (3, Some(48), false, true, Arc::new(OptqMethod), false),
    ]
    .into_iter()
    .enumerate()
    {
        let beta = GridSpec::reference(bits, group).unwrap().beta();
        let spec = GridSpec::new(bits, group, symmetric, beta).unwrap();
        let mut model = tiny_model(3);
        let mut packed = gptq_format(spec, act_order);
        let s = settings(spec, method, magr, act_order);
        quantize_model(
            &mut model,
            &calibration,
            &s,
            &mut common::Feed::new(&mut packed),
        )
        .unwrap();

        let fake = dir.join(format!("fake-{n}"));
        write_hf_dir(&model, &fake, WeightDtype::F32, false).unwrap();
        let loaded = Model::load(&fake).unwrap();
        assert_eq!(weight_bits(&loaded), weight_bits(&model));

        let gptq = dir.join(format!("gptq-{n}"));
        packed.write(&model, &gptq).unwrap();
        let format = packed.zero_format().unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(gptq.join("config.json")).unwrap())
                .unwrap();
        let q = &config["quantization_config"];
        assert_eq!(q["quant_method"], "gptq");
        assert_eq!(q["bits"], bits);
        assert_eq!(q["group_size"], group.map_or(-1, |g| g as i64));
        assert_eq!(q["desc_act"], act_order);
        assert_eq!(q["sym"], symmetric);
        assert_eq!(q["checkpoint_format"], format.checkpoint_format());
        // What the loaders require of the config, as read in their sources:
        // vLLM 0.33 (`AutoGPTQConfig.from_config`) fails without any of these keys;
        // GPTQModel 7.7 (`models/loader.py`) refuses `sym: false` in the v1 layout from
        // any other producer, so asymmetric grids must be v2; v1 for symmetric ones,
        // which every loader reads.
        for key in ["bits", "group_size", "desc_act", "sym"] {
            assert!(q.get(key).is_some(), "setting {n}: no `{key}`");
        }
        let expected_format = if symmetric { "gptq" } else { "gptq_v2" };
        assert_eq!(q["checkpoint_format"], expected_format, "setting {n}");

        let bytes = std::fs::read(gptq.join("model.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                assert!(
                    file.tensor(&kind.hf_name(block)).is_err(),
                    "no float weight"
                );
                let t = read_gptq_layer(&file, block, kind, bits, format, &model);
                // GPTQModel and transformers allocate ceil(inputs / group_size) rows of
                // scales and zeros (one row per channel without groups).
                let inputs = model.linear_shape(kind).1;
                assert_eq!(t.groups, group.map_or(1, |g| inputs.div_ceil(g)));
                let dequantized = dequantize_gptq(&t).unwrap();
                let (outputs, inputs) = model.linear_shape(kind);
                let fake_quant = loaded.linear_weight(block, kind).unwrap();
                for j in 0..outputs {
                    for i in 0..inputs {
                        assert_eq!(
                            dequantized[(i, j)].to_bits(),
                            fake_quant[j * inputs + i].to_bits(),
                            "setting {n}, block {block} {kind:?} ({i}, {j})"
                        );
                    }
                }
                if act_order && group.is_some() {
                    assert!(t.g_idx.windows(2).any(|w| w[0] > w[1]), "act-order g_idx");
                }
            }
        }
        // The float tensors are there too.
        assert!(file.tensor("model.embed_tokens.weight").is_ok());
        assert!(file.tensor("model.norm.weight").is_ok());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Layer records without their timings.
fn untimed(report: &PipelineReport) -> PipelineReport {
    let mut r = report.clone();
    r.seconds = Default::default();
    for l in &mut r.layers {
        l.quantize_seconds = 0.0;
        if let Some(m) = &mut l.preprocess {
            m.seconds = 0.0;
        }
    }
    r
}

#[test]
fn a_resumed_run_gives_the_same_bytes() {
    let dir = scratch("resume");
    let calibration = windows(5, 24, 2);
    let spec = GridSpec::reference(3, Some(16)).unwrap();
    let s = settings(spec, Arc::new(OptqMethod), true, true);
    let fingerprint = run_fingerprint("tiny", &s, &calibration);

    // Uninterrupted.
    let mut whole = tiny_model(4);
    let mut whole_gptq = gptq_format(spec, true);
    let mut feed = common::Feed::new(&mut whole_gptq);
    let report = quantize_model(&mut whole, &calibration, &s, &mut feed).unwrap();

    // Killed after block 0, then resumed on a fresh copy of the float model.
    let checkpoint = RunCheckpoint::new(dir.join("checkpoint"), fingerprint.clone());
    let mut killed = tiny_model(4);
    let mut killed_gptq = gptq_format(spec, true);
    let mut feed = common::Feed {
        checkpoint: Some(&checkpoint),
        fail_after: Some(0),
        ..common::Feed::new(&mut killed_gptq)
    };
    let err = quantize_model(&mut killed, &calibration, &s, &mut feed).unwrap_err();
    assert!(err.to_string().contains("simulated kill"));
    assert_eq!(checkpoint.blocks_done(), Some(1));

    let mut resumed = tiny_model(4);
    let mut gptq = gptq_format(spec, true);
    let state = checkpoint
        .load(&mut resumed, &mut [&mut gptq])
        .unwrap()
        .unwrap();
    assert_eq!(state.next_block, 1);
    let mut feed = common::Feed {
        checkpoint: Some(&checkpoint),
        ..common::Feed::new(&mut gptq)
    };
    let resumed_report = continue_quantize_model(&mut resumed, state, &s, &mut feed).unwrap();
    // Every block saved in the checkpoint left the memory: its weights are read from
    // the block file (the run without a checkpoint keeps them in memory).
    for block in 0..whole.num_blocks() {
        for kind in LinearKind::ALL {
            assert!(!resumed.is_resident(block, kind).unwrap());
            assert!(whole.is_resident(block, kind).unwrap());
        }
    }
    assert_eq!(weight_bits(&resumed), weight_bits(&whole));
    assert_eq!(untimed(&resumed_report), untimed(&report));
    for block in 0..whole.num_blocks() {
        for kind in LinearKind::ALL {
            assert_eq!(
                gptq.layer(block, kind).unwrap(),
                whole_gptq.layer(block, kind).unwrap(),
                "block {block} {kind:?}"
            );
        }
    }
    // The checkpointed run's packed layers left the memory for the checkpoint's files,
    // from which its directory is written, byte for byte the one written from memory.
    assert_eq!(gptq.layers_in_memory(), 0);
    assert_eq!(whole_gptq.layers_in_memory(), 7 * whole.num_blocks());
    let (from_memory, from_files) = (dir.join("gptq-memory"), dir.join("gptq-files"));
    whole_gptq.write(&whole, &from_memory).unwrap();
    gptq.write(&resumed, &from_files).unwrap();
    for file in ["config.json", "model.safetensors"] {
        assert!(
            std::fs::read(from_memory.join(file)).unwrap()
                == std::fs::read(from_files.join(file)).unwrap(),
            "{file}"
        );
    }

    // A checkpoint of other settings is refused, naming the directory.
    let other = RunCheckpoint::new(
        dir.join("checkpoint"),
        run_fingerprint(
            "tiny",
            &settings(spec, Arc::new(RtnMethod), true, true),
            &calibration,
        ),
    );
    let err = other
        .load(&mut tiny_model(4), &mut [])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another run") && err.contains("checkpoint"),
        "{err}"
    );
    // A corrupt block file is named.
    std::fs::write(
        dir.join("checkpoint/block-0000.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let err = checkpoint
        .load(&mut tiny_model(4), &mut [])
        .unwrap_err()
        .to_string();
    assert!(err.contains("block-0000.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_hidden_states_resume_to_the_same_bytes_and_stay_near_f32() {
    let dir = scratch("resume-bf16");
    let calibration = windows(5, 24, 3);
    let spec = GridSpec::reference(4, None).unwrap();
    let f32_settings = settings(spec, Arc::new(OptqMethod), true, false);
    let s = PipelineSettings {
        hidden_dtype: HiddenDtype::Bf16,
        ..f32_settings.clone()
    };
    let mut whole = tiny_model(6);
    let report = quantize_model(&mut whole, &calibration, &s, &mut |_| {}).unwrap();
    let mut exact = tiny_model(6);
    let exact_report =
        quantize_model(&mut exact, &calibration, &f32_settings, &mut |_| {}).unwrap();
    assert_ne!(
        weight_bits(&whole),
        weight_bits(&exact),
        "bf16 rounding changes H"
    );
    // Each block's input rounded to 8 significant bits moves the layer losses little.
    approx::assert_relative_eq!(
        report.summed_layer_loss(),
        exact_report.summed_layer_loss(),
        max_relative = 0.05
    );

    // Killed after block 0: the checkpoint keeps the hidden states in bf16.
    let checkpoint = RunCheckpoint::new(
        dir.join("checkpoint"),
        run_fingerprint("tiny", &s, &calibration),
    );
    let mut gptq = gptq_format(spec, false);
    let mut feed = common::Feed {
        checkpoint: Some(&checkpoint),
        fail_after: Some(0),
        ..common::Feed::new(&mut gptq)
    };
    let mut killed = tiny_model(6);
    quantize_model(&mut killed, &calibration, &s, &mut feed).unwrap_err();
    // 5 windows in batches of 2: three batch files.
    for i in 0..3 {
        let path = dir.join(format!("checkpoint/hidden-0001/batch-{i:04}.safetensors"));
        let hidden = llama_io::stored_tensors(&path).unwrap();
        assert!(
            hidden
                .values()
                .all(|t| t.encoding() == llama_io::stored::Encoding::Safetensors(Dtype::BF16))
        );
    }

    let mut resumed = tiny_model(6);
    let mut gptq = gptq_format(spec, false);
    let state = checkpoint
        .load(&mut resumed, &mut [&mut gptq])
        .unwrap()
        .unwrap();
    continue_quantize_model(&mut resumed, state, &s, &mut |_| {}).unwrap();
    assert_eq!(weight_bits(&resumed), weight_bits(&whole));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A GPTQ directory written from the packed layers left in a run checkpoint (each
/// tensor read from there when written, zero points repacked into the model's layout)
/// is, byte for byte, the one written from memory. One group of the model is all
/// negative, so with `beta = 0.9` its zero point is `2^bits` (v1 only): the model is
/// written in v1 while every other layer was packed in v2, the preferred layout.
#[test]
fn a_gptq_directory_written_from_the_checkpoint_is_the_one_written_from_memory() {
    let dir = scratch("gptq-from-checkpoint");
    let spec = GridSpec::new(3, Some(16), false, 0.9).unwrap();
    let s = PipelineSettings {
        method: Arc::new(RtnMethod),
        preprocessor: Arc::new(Identity),
        ..settings(spec, Arc::new(OptqMethod), false, false)
    };
    let model = || {
        let mut m = tiny_model(9);
        let mut w = m.linear_weight(1, LinearKind::Down).unwrap().to_vec();
        w[..16].iter_mut().for_each(|x| *x = -x.abs());
        m.set_linear_weight(1, LinearKind::Down, &w).unwrap();
        m
    };
    let calibration = windows(4, 24, 8);
    let mut in_memory = gptq_format(spec, false);
    let mut whole = model();
    quantize_model(
        &mut whole,
        &calibration,
        &s,
        &mut common::Feed::new(&mut in_memory),
    )
    .unwrap();
    let checkpoint = RunCheckpoint::new(dir.join("checkpoint"), "gptq".into());
    let mut saved = gptq_format(spec, false);
    let mut checkpointed = model();
    let mut feed = common::Feed {
        checkpoint: Some(&checkpoint),
        ..common::Feed::new(&mut saved)
    };
    quantize_model(&mut checkpointed, &calibration, &s, &mut feed).unwrap();
    assert_eq!(saved.layers_in_memory(), 0);
    let down = saved.layer(1, LinearKind::Down).unwrap().unwrap();
    assert_eq!(down.format, ZeroFormat::V1);
    let q = saved.layer(0, LinearKind::Q).unwrap().unwrap();
    assert_eq!(q.format, ZeroFormat::V2);

    let (a, b) = (dir.join("memory"), dir.join("files"));
    in_memory.write(&whole, &a).unwrap();
    saved.write(&checkpointed, &b).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["checkpoint_format"], "gptq");
    for file in ["config.json", "model.safetensors"] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Hidden states spilled to disk (one file per batch) give the bytes of a run that
/// keeps them in memory, uninterrupted and resumed either way; the checkpoint's saved
/// hidden states are not disturbed when the spilled files are replaced.
#[test]
fn spilled_hidden_states_give_the_same_bytes_and_resume() {
    let dir = scratch("spill");
    let calibration = windows(5, 24, 4);
    let spec = GridSpec::reference(3, None).unwrap();
    for dtype in [HiddenDtype::F32, HiddenDtype::Bf16] {
        let in_memory = PipelineSettings {
            hidden_dtype: dtype,
            ..settings(spec, Arc::new(OptqMethod), true, false)
        };
        let checkpoint = RunCheckpoint::new(
            dir.join(format!("checkpoint-{}", dtype.name())),
            run_fingerprint("tiny", &in_memory, &calibration),
        );
        let spilled = PipelineSettings {
            hidden_spill: Some(checkpoint.spill_dir()),
            ..in_memory.clone()
        };
        // The spill directory is not part of the run's identity.
        assert_eq!(
            run_fingerprint("tiny", &spilled, &calibration),
            run_fingerprint("tiny", &in_memory, &calibration)
        );
        let mut whole = tiny_model(4);
        let report = quantize_model(&mut whole, &calibration, &in_memory, &mut |_| {}).unwrap();

        // Block 0 checkpointed, then killed at the end of block 1 before its checkpoint,
        // after its forward pass replaced the spilled files: 5 windows in batches of 2,
        // three files.
        let mut gptq = gptq_format(spec, false);
        let mut feed = common::Feed {
            checkpoint: Some(&checkpoint),
            save_until: Some(1),
            fail_after: Some(1),
            ..common::Feed::new(&mut gptq)
        };
        let mut killed = tiny_model(4);
        quantize_model(&mut killed, &calibration, &spilled, &mut feed).unwrap_err();
        assert_eq!(checkpoint.blocks_done(), Some(1));
        let files = std::fs::read_dir(checkpoint.spill_dir()).unwrap().count();
        assert_eq!(files, 3);
        for resume_spilled in [false, true] {
            let mut resumed = tiny_model(4);
            let mut gptq = gptq_format(spec, false);
            let state = checkpoint
                .load(&mut resumed, &mut [&mut gptq])
                .unwrap()
                .unwrap();
            let s = match resume_spilled {
                true => &spilled,
                false => &in_memory,
            };
            let resumed_report =
                continue_quantize_model(&mut resumed, state, s, &mut |_| {}).unwrap();
            assert_eq!(
                weight_bits(&resumed),
                weight_bits(&whole),
                "{} resumed, spilled: {resume_spilled}",
                dtype.name()
            );
            assert_eq!(untimed(&resumed_report), untimed(&report));
        }

        // Uninterrupted while spilling.
        let mut spilled_model = tiny_model(4);
        let spilled_report =
            quantize_model(&mut spilled_model, &calibration, &spilled, &mut |_| {}).unwrap();
        assert_eq!(weight_bits(&spilled_model), weight_bits(&whole));
        assert_eq!(untimed(&spilled_report), untimed(&report));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_true_sequential_order_runs_and_lands_on_grids() {
    let calibration = windows(4, 32, 5);
    let spec = GridSpec::reference(3, None).unwrap();
    let base = settings(spec, Arc::new(OptqMethod), false, false);
    let run = |true_sequential: bool| {
        let mut model = tiny_model(6);
        let mut packed = gptq_format(spec, false);
        let s = PipelineSettings {
            true_sequential,
            ..base.clone()
        };
        let report = quantize_model(
            &mut model,
            &calibration,
            &s,
            &mut common::Feed::new(&mut packed),
        )
        .unwrap();
        // Every layer is on its grid: the packed codes reproduce the weights.
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                let t = packed.layer(block, kind).unwrap().unwrap();
                let d = dequantize_gptq(&t).unwrap();
                let (outputs, inputs) = model.linear_shape(kind);
                let w = model.linear_weight(block, kind).unwrap();
                assert!((0..outputs).all(|j| (0..inputs).all(|i| d[(i, j)] == w[j * inputs + i])));
            }
        }
        (report, weight_bits(&model))
    };
    let (plain, plain_bits) = run(false);
    let (sequential, sequential_bits) = run(true);
    let names = |r: &PipelineReport| r.layers.iter().map(|l| l.layer.clone()).collect::<Vec<_>>();
    assert_eq!(names(&plain), names(&sequential));
    // The first layers read the same input either way; the later ones see the quantized
    // layers before them, so the weights differ.
    assert_eq!(plain.layers[0].layer_loss, sequential.layers[0].layer_loss);
    assert_ne!(plain_bits, sequential_bits);
}

/// A format written by the test alone, through the library's seams: one file per layer
/// holding its codes, with its state saved and restored per block for `--resume`.
struct PerLayerCodes {
    layers: std::collections::BTreeMap<(usize, LinearKind), Vec<i32>>,
}

impl OutputFormat for PerLayerCodes {
    fn name(&self) -> &str {
        "per-layer-codes"
    }

    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        q: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        let codes = q.codes().iter().map(|&c| i32::from(c)).collect();
        self.layers.insert((block, kind), codes);
        Ok(())
    }

    fn write(
        &self,
        _model: &Model,
        dir: &std::path::Path,
    ) -> Result<Option<String>, PipelineError> {
        std::fs::create_dir_all(dir).unwrap();
        for ((block, kind), codes) in &self.layers {
            let text: Vec<String> = codes.iter().map(i32::to_string).collect();
            std::fs::write(dir.join(kind.hf_name(*block)), text.join(" ")).unwrap();
        }
        Ok(Some(format!("{} layer files", self.layers.len())))
    }

    fn save_block(&self, block: usize) -> Result<FormatState, PipelineError> {
        let mut state = FormatState::default();
        for kind in LinearKind::ALL {
            let codes = &self.layers[&(block, kind)];
            state.tensors.push(NamedTensor {
                name: kind.hf_suffix().to_string(),
                shape: vec![codes.len()],
                data: TensorData::I32(codes.clone()),
            });
        }
        Ok(state)
    }

    fn restore_block(&mut self, block: usize, state: FormatState) -> Result<(), PipelineError> {
        for t in state.tensors {
            let kind = LinearKind::ALL
                .into_iter()
                .find(|k| k.hf_suffix() == t.name)
                .unwrap();
            let TensorData::I32(codes) = t.data else {
                panic!("codes are int32");
            };
            self.layers.insert((block, kind), codes);
        }
        Ok(())
    }
}

/// Progress and warnings nobody reads; the run after block `fail_after` stops (a kill).
struct Quiet;

impl RunEvents for Quiet {
    fn progress(&mut self, _: Progress) {}
    fn warning(&mut self, _: usize, _: LinearKind, _: &str) {}
}

#[test]
fn a_format_defined_outside_the_library_is_written_and_resumed() {
    let dir = scratch("custom-format");
    let calibration = windows(4, 24, 7);
    let spec = GridSpec::reference(4, None).unwrap();
    let s = settings(spec, Arc::new(OptqMethod), true, false);
    let new_format = || -> Vec<Box<dyn OutputFormat>> {
        vec![Box::new(PerLayerCodes {
            layers: Default::default(),
        })]
    };
    let report = |model: &Model, pipeline: PipelineReport| RunReport {
        model: "generated".into(),
        formats: vec!["per-layer-codes".into()],
        settings: s.record("calib".into(), 4, 24, 7),
        float: None,
        quantized: None,
        pipeline,
        seconds_total: model.num_blocks() as f64,
        peak_rss_bytes: None,
    };

    // Uninterrupted.
    let whole = dir.join("whole");
    let staging = Staging::create(&whole, false, false).unwrap();
    let mut formats = new_format();
    let mut model = tiny_model(9);
    let pipeline = run_pipeline(
        &mut model,
        &calibration,
        &s,
        "tiny",
        Some(&staging),
        false,
        &mut formats,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(pipeline.resumed_after, None);
    let notes = write_outputs(
        staging.partial(),
        &model,
        &formats,
        &report(&model, pipeline),
    )
    .unwrap();
    assert_eq!(notes, ["14 layer files"]);
    staging.commit().unwrap();
    let layer_file = "per-layer-codes/model.layers.1.mlp.down_proj.weight";
    assert!(whole.join(layer_file).is_file());
    assert!(whole.join("report.json").is_file() && whole.join("magnitudes.svg").is_file());

    // Interrupted after block 0 (a weight that overflows in block 1), then resumed on the
    // float model: the same files.
    let out = dir.join("out");
    let staging = Staging::create(&out, false, false).unwrap();
    let mut broken = tiny_model(9);
    let mut w = broken.linear_weight(1, LinearKind::Up).unwrap().to_vec();
    w[5] = 1e30;
    broken.set_linear_weight(1, LinearKind::Up, &w).unwrap();
    let mut formats = new_format();
    assert!(
        run_pipeline(
            &mut broken,
            &calibration,
            &s,
            "tiny",
            Some(&staging),
            false,
            &mut formats,
            &mut Quiet,
        )
        .is_err()
    );
    assert!(staging.keep_checkpoint().is_some());
    drop(staging);
    let staging = Staging::create(&out, false, true).unwrap();
    let mut formats = new_format();
    let mut model = tiny_model(9);
    let pipeline = run_pipeline(
        &mut model,
        &calibration,
        &s,
        "tiny",
        Some(&staging),
        true,
        &mut formats,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(pipeline.resumed_after, Some(1), "block 0 restored");
    write_outputs(
        staging.partial(),
        &model,
        &formats,
        &report(&model, pipeline),
    )
    .unwrap();
    staging.commit().unwrap();
    for block in 0..2 {
        for kind in LinearKind::ALL {
            let file = format!("per-layer-codes/{}", kind.hf_name(block));
            assert_eq!(
                std::fs::read(whole.join(&file)).unwrap(),
                std::fs::read(out.join(&file)).unwrap(),
                "{file}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Quantizes `model()` with `s` through the gguf format (checkpointing every block) and
/// writes the file under `dir/gguf-{n}`; checks that candle reads it back as the
/// fake-quant weights bit for bit and that the checkpoint restores every layer (bytes and
/// type) into a fresh format. Returns the file and the quantized model.
fn gguf_round_trip(
    dir: &std::path::Path,
    n: usize,
    s: &PipelineSettings,
    model: fn() -> Model,
) -> (PathBuf, Model) {
    let context = FormatContext {
        spec: s.spec,
        gguf_preset: s.gguf_preset,
        act_order: false,
        damping: s.method.damping(),
        dtype: WeightDtype::F32,
        gguf_float: GgufFloat::F32,
    };
    let mut quantized = model();
    s.check(quantized.config(), 32).unwrap();
    let mut format = GgufFormat::new(&context).unwrap();
    let checkpoint = RunCheckpoint::new(dir.join(format!("checkpoint-{n}")), "gguf".into());
    let mut feed = common::Feed {
        checkpoint: Some(&checkpoint),
        ..common::Feed::new(&mut format)
    };
    quantize_model(&mut quantized, &windows(4, 32, 3), s, &mut feed).unwrap();
    let file = dir.join(format!("gguf-{n}")).join(GGUF_FILE);
    format.write(&quantized, file.parent().unwrap()).unwrap();
    let label = s.label();

    // candle's dequantization of the written blocks (read from the checkpoint's files,
    // where every block went) is the fake-quant model.
    assert_eq!(format.layers_in_memory(), 0);
    let loaded = Model::load(&file).unwrap();
    assert_eq!(weight_bits(&loaded), weight_bits(&quantized), "{label}");

    // The checkpoint restores every encoded layer into a fresh format.
    let mut resumed = GgufFormat::new(&context).unwrap();
    checkpoint
        .load(&mut model(), &mut [&mut resumed])
        .unwrap()
        .unwrap();
    for block in 0..quantized.num_blocks() {
        for kind in LinearKind::ALL {
            assert_eq!(
                resumed.layer(block, kind).unwrap(),
                format.layer(block, kind).unwrap()
            );
            assert_eq!(
                resumed.layer_type(block, kind),
                format.layer_type(block, kind)
            );
        }
    }
    (file, quantized)
}

#[test]
fn the_gguf_file_reads_back_as_the_fake_quant_weights_and_its_state_resumes() {
    let dir = scratch("gguf");
    let cases: [(GgmlBlockType, GridFit, Arc<dyn Method>, bool); 5] = [
        (
            GgmlBlockType::Q4_0,
            GridFit::MinMax,
            Arc::new(OptqMethod),
            true,
        ),
        (
            GgmlBlockType::Q4_1,
            GridFit::Weighted,
            Arc::new(RtnMethod),
            true,
        ),
        (
            GgmlBlockType::Q5_0,
            GridFit::Weighted,
            Arc::new(OptqMethod),
            false,
        ),
        (
            GgmlBlockType::Q5_1,
            GridFit::MinMax,
            Arc::new(OptqCdMethod {
                sweeps: 2,
                lambda: None,
            }),
            true,
        ),
        (
            GgmlBlockType::Q8_0,
            GridFit::MinMax,
            Arc::new(OptqMethod),
            false,
        ),
    ];
    for (n, (ty, fit, method, magr)) in cases.into_iter().enumerate() {
        let s = settings(GridSpec::ggml(ty, fit), method, magr, false);
        gguf_round_trip(&dir, n, &s, || tiny_model(2));
    }
    // A run whose grids are not a GGUF format cannot have the gguf format.
    let gptq_grid = FormatContext {
        spec: GridSpec::reference(4, Some(32)).unwrap(),
        gguf_preset: None,
        act_order: false,
        damping: None,
        dtype: WeightDtype::F32,
        gguf_float: GgufFloat::F32,
    };
    let e = GgufFormat::new(&gptq_grid).unwrap_err().to_string();
    assert!(e.contains("--gguf-type"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// llama.cpp's K-quant presets on a model whose widths are multiples of 256: every K type
/// is written (the presets give some layers more bits), candle reads the file back as the
/// fake-quant weights bit for bit, the file's tensor types are the preset's, and the
/// per-layer types survive a checkpoint.
#[test]
fn gguf_presets_write_every_k_quant_exactly() {
    let dir = scratch("gguf-presets");
    let cases: [(GgufPreset, GridFit, Arc<dyn Method>, bool); 4] = [
        (
            GgufPreset::Q2_K,
            GridFit::Weighted,
            Arc::new(RtnMethod),
            false,
        ),
        (
            GgufPreset::Q3_K_M,
            GridFit::MinMax,
            Arc::new(OptqMethod),
            false,
        ),
        (
            GgufPreset::Q4_K_M,
            GridFit::Weighted,
            Arc::new(OptqMethod),
            true,
        ),
        (
            GgufPreset::Q5_K_S,
            GridFit::Weighted,
            Arc::new(OptqCdMethod {
                sweeps: 1,
                lambda: None,
            }),
            false,
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (n, (preset, fit, method, magr)) in cases.into_iter().enumerate() {
        let s = PipelineSettings {
            gguf_preset: Some(preset),
            ..settings(
                GridSpec::ggml(preset.default_type(), fit),
                method,
                magr,
                false,
            )
        };
        let (file, model) = gguf_round_trip(&dir, n, &s, || common::k_quant_model(8, 4));
        // The file's tensor types, from its header, are the preset's.
        let types = gguf_tensor_types(&file);
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                let expected = preset.layer_type(model.config(), block, kind).unwrap();
                let name = kind.gguf_name(block);
                assert_eq!(types[&name], expected.type_id(), "{preset} {name}");
                seen.insert(expected);
            }
        }
    }
    for ty in GgmlBlockType::K_QUANTS {
        assert!(seen.contains(&ty), "{ty} never written: {seen:?}");
    }
    // The tiny model's 64-wide layers are not whole super-blocks: Q4_K falls back to Q5_0.
    let tiny = tiny_model(1);
    let s = PipelineSettings {
        gguf_preset: Some(GgufPreset::Q4_K_M),
        ..settings(
            GridSpec::ggml(GgmlBlockType::Q4_K, GridFit::Weighted),
            Arc::new(RtnMethod),
            false,
            false,
        )
    };
    let spec = s.layer_spec(tiny.config(), 1, LinearKind::Gate).unwrap();
    assert_eq!(spec.ggml_type(), Some(GgmlBlockType::Q5_0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `ggml_type` id of every tensor of a GGUF file, by name, from candle's parse of
/// its header.
fn gguf_tensor_types(path: &std::path::Path) -> std::collections::BTreeMap<String, u32> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    content
        .tensor_infos
        .iter()
        .map(|(name, info)| (name.clone(), llama_io::gguf::ggml_type_id(info.ggml_dtype)))
        .collect()
}
