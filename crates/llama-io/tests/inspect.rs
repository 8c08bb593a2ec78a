//! `inspect`: every tensor's dtype, shape and size from the headers only, and bad
//! headers named.

mod common;

use common::{TINY, TempDir};
use llama_io::{DirExtras, Model, NamedTensor, TensorData, WeightDtype, inspect};

#[test]
fn a_written_directory_is_listed_from_its_header() {
    let src = TempDir::new("inspect-src");
    let weights = common::random_weights(&TINY, 61);
    common::write_hf(src.path(), &TINY, &weights);
    let model = Model::load(src.path()).unwrap();
    let out = TempDir::new("inspect-out");
    let dir = out.path().join("m");
    let mut extras = DirExtras::default();
    extras.tensors.push(
        NamedTensor {
            name: "extra.codes".into(),
            shape: vec![3, 2],
            data: TensorData::I32(vec![1; 6]),
        }
        .into(),
    );
    extras.config.insert("note".into(), "hello".into());
    llama_io::write_hf_dir_with(&model, &dir, WeightDtype::F16, false, &extras).unwrap();

    let inventory = inspect(&dir).unwrap();
    assert_eq!(inventory.format, "Hugging Face directory");
    assert_eq!(inventory.metadata["note"], "\"hello\"");
    assert_eq!(inventory.metadata["hidden_size"], "64");
    assert_eq!(inventory.tensors.len(), weights.len() + 1);
    let names: Vec<&str> = inventory.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    let extra = inventory
        .tensors
        .iter()
        .find(|t| t.name == "extra.codes")
        .unwrap();
    assert_eq!(
        (extra.dtype.as_str(), &extra.shape[..], extra.bytes),
        ("I32", &[3, 2][..], 24)
    );
    let down = inventory
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.1.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(
        (down.dtype.as_str(), &down.shape[..], down.bytes),
        ("F16", &[64, 96][..], 2 * 64 * 96)
    );
}

#[test]
fn bad_safetensors_headers_are_errors_naming_the_file() {
    let out = TempDir::new("inspect-bad");
    let dir = out.path();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    let weights = dir.join("model.safetensors");
    let good = common::safetensors_bytes(&[(
        "t".to_string(),
        vec![2],
        common::f32_bytes(&[1.0, 2.0]),
        "F32",
    )]);
    std::fs::write(&weights, &good).unwrap();
    let inventory = inspect(dir).unwrap();
    assert_eq!(inventory.tensors.len(), 1);
    assert_eq!(inventory.tensors[0].bytes, 8);

    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut not_json = good.clone();
    not_json[8] = b'!';
    for bytes in [
        &good[..5],
        &good[..good.len() - 1],
        &huge[..],
        &not_json[..],
    ] {
        std::fs::write(&weights, bytes).unwrap();
        let err = inspect(dir).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}

/// A GGUF whose tensor table points past the end of the file, or into another tensor,
/// is an error naming the tensor (the one at the lowest offset of those cut off), as
/// when the model is loaded.
#[test]
fn gguf_tensors_past_the_end_or_overlapping_are_named() {
    let out = TempDir::new("inspect-gguf");
    let path = out.path().join("m.gguf");
    let weights = common::random_weights(&TINY, 62);
    let meta = common::gguf_metadata(&TINY);
    let tensors = common::gguf_tensors_f32(&TINY, &weights);
    let bytes = common::gguf_bytes(3, &meta, &tensors);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(inspect(&path).unwrap().tensors.len(), tensors.len());

    // Cut in the data: the first tensor (by offset) that no longer fits is named.
    let padded = |t: &common::GTensor| t.bytes.len().div_ceil(32) * 32;
    let data_start = bytes.len() - tensors.iter().map(padded).sum::<usize>();
    let cut = data_start + (bytes.len() - data_start) / 2;
    let mut offset = data_start;
    let first_cut = tensors.iter().find_map(|t| {
        let end = offset + t.bytes.len();
        offset += padded(t);
        (end > cut).then(|| t.name.clone())
    });
    std::fs::write(&path, &bytes[..cut]).unwrap();
    for err in [
        inspect(&path).unwrap_err().to_string(),
        Model::load(&path).err().unwrap().to_string(),
    ] {
        let name = first_cut.as_deref().unwrap();
        assert!(
            err.contains("m.gguf") && err.contains("truncated") && err.contains(name),
            "{err}"
        );
    }

    // A tensor whose data runs into the next one.
    let mut overlapping = common::gguf_tensors_f32(&TINY, &weights);
    overlapping
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_v.weight")
        .unwrap()
        .bytes
        .truncate(12);
    std::fs::write(&path, common::gguf_bytes(3, &meta, &overlapping)).unwrap();
    let err = inspect(&path).unwrap_err().to_string();
    assert!(
        err.contains("blk.0.attn_v.weight") && err.contains("overlap"),
        "{err}"
    );
}
