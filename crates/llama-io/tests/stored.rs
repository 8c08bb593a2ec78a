//! Weights left in their safetensors file ([`llama_io::StoredTensor`]): a model read
//! from safetensors keeps its linear layers there, in the stored dtype, and computes
//! exactly what the same model held in memory computes.

mod common;

use std::collections::HashMap;

use common::{TINY, TempDir};
use faer::Par;
use half::f16;
use llama_io::{HostTensor, LinearKind, LlamaIoError, Model, stored_tensors};

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 7919 + 13) % vocab as u64) as u32)
        .collect()
}

/// The tiny model written with f16 weights: its directory and the f16 values as f32.
fn f16_model(tag: &str, seed: u64) -> (TempDir, common::Tensors) {
    let dir = TempDir::new(tag);
    let weights: common::Tensors = common::random_weights(&TINY, seed)
        .into_iter()
        .map(|(n, (s, d))| {
            (
                n,
                (s, d.iter().map(|&x| f16::from_f32(x).to_f32()).collect()),
            )
        })
        .collect();
    let list: Vec<_> = weights
        .iter()
        .map(|(n, (s, d))| {
            let bytes = d
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect();
            (n.clone(), s.clone(), bytes, "F16")
        })
        .collect();
    std::fs::write(
        dir.path().join("config.json"),
        common::config_json(&TINY).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        common::safetensors_bytes(&list),
    )
    .unwrap();
    (dir, weights)
}

/// The same weights held in memory.
fn in_memory(model: &Model, weights: &common::Tensors) -> Model {
    let tensors: HashMap<String, HostTensor> = weights
        .iter()
        .map(|(n, (shape, data))| {
            let t = HostTensor {
                shape: shape.clone(),
                data: data.clone(),
            };
            (n.clone(), t)
        })
        .collect();
    Model::from_hf_tensors(model.config().clone(), tensors, None, "memory".as_ref()).unwrap()
}

fn bits(x: &candle_core::Tensor) -> Vec<u32> {
    x.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn linear_weights_stay_in_the_file_and_compute_as_in_memory() {
    let (dir, weights) = f16_model("stored-fwd", 3);
    let mut stored = Model::load(dir.path()).unwrap();
    let memory = in_memory(&stored, &weights);
    for block in 0..stored.num_blocks() {
        for kind in LinearKind::ALL {
            assert!(
                !stored.is_resident(block, kind).unwrap(),
                "{block} {kind:?}"
            );
            assert!(memory.is_resident(block, kind).unwrap());
            assert_eq!(
                stored.linear_weight(block, kind).unwrap(),
                memory.linear_weight(block, kind).unwrap(),
            );
        }
    }
    let toks = tokens(40, TINY.vocab);
    let expected = bits(&memory.forward(&[&toks], Par::Seq).unwrap());
    assert_eq!(bits(&stored.forward(&[&toks], Par::Seq).unwrap()), expected);

    // Read once into memory, the block computes the same.
    stored.make_resident(1).unwrap();
    assert!(stored.is_resident(1, LinearKind::Down).unwrap());
    assert!(!stored.is_resident(0, LinearKind::Down).unwrap());
    assert_eq!(bits(&stored.forward(&[&toks], Par::Seq).unwrap()), expected);

    // The open file is still read after the directory is gone.
    drop(dir);
    assert_eq!(bits(&stored.forward(&[&toks], Par::Seq).unwrap()), expected);
}

#[test]
fn a_weight_moved_to_another_file_is_read_from_there_and_shapes_are_checked() {
    let (dir, _) = f16_model("stored-move", 4);
    let mut model = Model::load(dir.path()).unwrap();
    let (out, inp) = model.linear_shape(LinearKind::O);
    let values: Vec<f32> = (0..out * inp).map(|i| i as f32 * 0.25 - 3.0).collect();
    let file = dir.path().join("moved.safetensors");
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(
        &file,
        common::safetensors_bytes(&[
            ("o".into(), vec![out, inp], bytes, "F32"),
            (
                "flat".into(),
                vec![out * inp],
                vec![0; out * inp * 4],
                "F32",
            ),
            ("codes".into(), vec![4], vec![7; 16], "I32"),
        ]),
    )
    .unwrap();
    let mut tensors = stored_tensors(&file).unwrap();

    // A wrong shape is refused, naming both tensors and the file; nothing changes.
    let before = model.linear_weight(0, LinearKind::O).unwrap().into_owned();
    let err = model
        .set_linear_stored(0, LinearKind::O, tensors.remove("flat").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("flat") && err.contains("o_proj") && err.contains("moved.safetensors"),
        "{err}"
    );
    assert_eq!(model.linear_weight(0, LinearKind::O).unwrap(), &before[..]);

    model
        .set_linear_stored(0, LinearKind::O, tensors.remove("o").unwrap())
        .unwrap();
    assert!(!model.is_resident(0, LinearKind::O).unwrap());
    assert_eq!(model.linear_weight(0, LinearKind::O).unwrap(), &values[..]);

    // A tensor of another dtype is an error when read, naming it.
    let err = tensors["codes"].read().unwrap_err();
    assert!(
        matches!(err, LlamaIoError::Unsupported { .. }) && err.to_string().contains("codes"),
        "{err}"
    );
}

#[test]
fn a_non_finite_stored_weight_is_refused_at_load_naming_the_file_and_tensor() {
    let dir = TempDir::new("stored-nan");
    let mut weights = common::random_weights(&TINY, 5);
    let name = "model.layers.1.mlp.down_proj.weight";
    weights.get_mut(name).unwrap().1[3] = f32::NAN;
    common::write_hf(dir.path(), &TINY, &weights);
    let err = Model::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(name) && err.contains("model.safetensors") && err.contains("non-finite"),
        "{err}"
    );
}

#[test]
fn a_generated_model_loads_with_the_drawn_laws_and_the_same_seed_gives_the_same_bytes() {
    use llama_io::generate::{SHAPES, WEIGHT_STD, shape, write_random_model};
    let dir = TempDir::new("generated");
    let config = shape("tiny").unwrap();
    assert!(SHAPES.iter().all(|(name, _)| shape(name).is_some()));
    let mut calls = Vec::new();
    let a = dir.path().join("a");
    write_random_model(&config, &a, 7, false, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(calls.last(), Some(&(3, 3)));
    let b = dir.path().join("b");
    write_random_model(&config, &b, 7, false, &mut |_, _| {}).unwrap();
    let shard = "model-00002-of-00003.safetensors";
    assert_eq!(
        std::fs::read(a.join(shard)).unwrap(),
        std::fs::read(b.join(shard)).unwrap()
    );
    // An existing directory is kept without `overwrite`.
    assert!(write_random_model(&config, &a, 8, false, &mut |_, _| {}).is_err());

    let model = Model::load(&a).unwrap();
    assert_eq!(model.config(), &config);
    assert!(!model.is_resident(1, LinearKind::Up).unwrap());
    // The weights: mean about 0, standard deviation WEIGHT_STD, heavy tails (Student-t
    // with 4 degrees of freedom has kurtosis beyond the normal's 3); the norms are 1.
    let w = model.linear_weight(1, LinearKind::Up).unwrap();
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = w
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let kurtosis = w
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(4))
        .sum::<f64>()
        / n
        / var.powi(2);
    assert!(mean.abs() < 0.1 * f64::from(WEIGHT_STD), "{mean}");
    approx::assert_relative_eq!(var.sqrt(), f64::from(WEIGHT_STD), max_relative = 0.1);
    assert!(kurtosis > 4.0, "{kurtosis}");
    assert!(
        model
            .tensor(llama_io::TensorRole::AttnNorm(0))
            .unwrap()
            .iter()
            .all(|&g| g == 1.0)
    );
    // Its tokenizer encodes any text below the vocabulary, and it runs.
    let ids = model.encode("Any text, even ünïcödé.").unwrap();
    assert!(ids.iter().all(|&id| (id as usize) < config.vocab_size));
    let logits = model.forward(&[&ids], Par::Seq).unwrap();
    assert_eq!(logits.dims(), &[1, ids.len(), config.vocab_size]);
}
