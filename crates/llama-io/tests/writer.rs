//! The Hugging Face directory writer: exact f32 round trip, f16/bf16 rounding,
//! the config a `transformers` loader needs, the tokenizer, atomic replacement, and
//! the generic extras (tensors written as given, omitted tensors, config entries).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{Spec, TINY, TempDir, Tensors};
use half::{bf16, f16};
use llama_io::{
    DirExtras, ExtraTensor, LinearKind, Model, NamedTensor, TensorData, WeightDtype, write_hf_dir,
    write_hf_dir_with,
};
use safetensors::Dtype;

fn tensors_of(model: &Model) -> Tensors {
    model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, s, d)| (n, (s, d.to_vec())))
        .collect()
}

fn tiny_model(spec: &Spec, seed: u64) -> (TempDir, Tensors, Model) {
    let dir = TempDir::new("writer-src");
    let weights = common::random_weights(spec, seed);
    common::write_hf(dir.path(), spec, &weights);
    let model = Model::load(dir.path()).unwrap();
    (dir, weights, model)
}

/// A word-level tokenizer over a few words, built in the test.
fn small_tokenizer() -> tokenizers::Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let vocab = ["[UNK]", "the", "cat", "sat", "on", "mat"]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32));
    let model = WordLevel::builder()
        .vocab(vocab.collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer
}

#[test]
fn f32_round_trip_is_exact_for_tied_and_untied_models() {
    for spec in [TINY, Spec { tied: true, ..TINY }] {
        let (_src, weights, model) = tiny_model(&spec, 51);
        let out = TempDir::new("writer-out");
        let target = out.path().join("model");
        write_hf_dir(&model, &target, WeightDtype::F32, false).unwrap();
        let back = Model::load(&target).unwrap();
        assert_eq!(back.config(), model.config());
        assert_eq!(tensors_of(&back), weights);
        assert!(
            !target.join("tokenizer.json").exists(),
            "no tokenizer to write"
        );
        // Only the target is left in the parent: no temporary directories.
        let entries: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("model")]);
        // The weights are as readable as the other files (the safetensors writer
        // creates its file owner-only).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |name: &str| {
                std::fs::metadata(target.join(name))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("model.safetensors"), 0o644);
        }
    }
}

#[test]
fn half_precision_output_rounds_each_weight_once() {
    let (_src, weights, model) = tiny_model(&TINY, 52);
    for (dtype, round) in [
        (
            WeightDtype::F16,
            (|x: f32| f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (WeightDtype::BF16, |x: f32| bf16::from_f32(x).to_f32()),
    ] {
        let out = TempDir::new("writer-half");
        let target = out.path().join("m");
        write_hf_dir(&model, &target, dtype, false).unwrap();
        let back = Model::load(&target).unwrap();
        let expected: Tensors = weights
            .iter()
            .map(|(n, (s, d))| {
                (
                    n.clone(),
                    (s.clone(), d.iter().map(|&x| round(x)).collect()),
                )
            })
            .collect();
        assert_eq!(tensors_of(&back), expected, "{dtype:?}");
        // Already-rounded weights survive a second write bit for bit.
        let again = out.path().join("m2");
        write_hf_dir(&back, &again, dtype, false).unwrap();
        assert_eq!(
            std::fs::read(target.join("model.safetensors")).unwrap(),
            std::fs::read(again.join("model.safetensors")).unwrap()
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["torch_dtype"], dtype.torch_name());
    }
}

#[test]
fn config_json_carries_what_transformers_needs() {
    let (_src, _w, model) = tiny_model(&TINY, 53);
    let out = TempDir::new("writer-config");
    let target = out.path().join("m");
    write_hf_dir(&model, &target, WeightDtype::F32, false).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
            .unwrap();
    let expected = [
        ("architectures", serde_json::json!(["LlamaForCausalLM"])),
        ("model_type", "llama".into()),
        ("torch_dtype", "float32".into()),
        ("hidden_act", "silu".into()),
        ("hidden_size", 64.into()),
        ("intermediate_size", 96.into()),
        ("num_hidden_layers", 2.into()),
        ("num_attention_heads", 4.into()),
        ("num_key_value_heads", 2.into()),
        ("head_dim", 16.into()),
        ("vocab_size", 300.into()),
        ("rope_theta", 10000.0.into()),
        ("rms_norm_eps", 1e-5.into()),
        ("tie_word_embeddings", false.into()),
        ("max_position_embeddings", 512.into()),
        ("attention_bias", false.into()),
        ("mlp_bias", false.into()),
        ("rope_scaling", serde_json::Value::Null),
    ];
    for (key, value) in expected {
        assert_eq!(config[key], value, "config.json field {key}");
    }
    let safetensors = std::fs::read(target.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(safetensors[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&safetensors[8..8 + header_len]).unwrap();
    assert_eq!(
        header["__metadata__"]["format"], "pt",
        "transformers expects format = pt"
    );
    assert_eq!(
        header["model.layers.1.mlp.down_proj.weight"]["shape"],
        serde_json::json!([64, 96])
    );
}

#[test]
fn tokenizer_is_written_and_read_back() {
    let (_src, _w, mut model) = tiny_model(&TINY, 54);
    assert!(model.tokenizer().is_err());
    model.set_tokenizer(Some(small_tokenizer()));
    assert_eq!(
        model.encode("the cat sat on the mat").unwrap(),
        vec![1, 2, 3, 4, 1, 5]
    );
    let out = TempDir::new("writer-tok");
    let target = out.path().join("m");
    write_hf_dir(&model, &target, WeightDtype::F32, false).unwrap();
    assert!(target.join("tokenizer_config.json").exists());
    let back = Model::load(&target).unwrap();
    assert_eq!(
        back.encode("the cat sat on the mat").unwrap(),
        vec![1, 2, 3, 4, 1, 5]
    );
    assert_eq!(back.encode("a dog").unwrap(), vec![0, 0]);
}

#[test]
fn existing_target_needs_overwrite_and_is_replaced_whole() {
    let (_src, _w, mut model) = tiny_model(&TINY, 55);
    let out = TempDir::new("writer-exists");
    let target = out.path().join("m");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "old").unwrap();
    assert!(write_hf_dir(&model, &target, WeightDtype::F32, false).is_err());
    assert_eq!(
        std::fs::read_to_string(target.join("keep.txt")).unwrap(),
        "old"
    );

    let (out_n, in_n) = model.linear_shape(LinearKind::O);
    model
        .set_linear_weight(0, LinearKind::O, &vec![0.25; out_n * in_n])
        .unwrap();
    write_hf_dir(&model, &target, WeightDtype::F32, true).unwrap();
    assert!(
        !target.join("keep.txt").exists(),
        "the old directory is replaced as a whole"
    );
    let back = Model::load(&target).unwrap();
    assert!(
        back.linear_weight(0, LinearKind::O)
            .unwrap()
            .iter()
            .all(|&x| x == 0.25)
    );
    let entries = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(entries, 1, "no temporary or backup directory is left");
}

#[test]
fn unwritable_target_is_an_error_and_leaves_nothing() {
    let (_src, _w, model) = tiny_model(&TINY, 56);
    let out = TempDir::new("writer-bad");
    // A file where the directory above the target must go (missing directories are
    // made; this one cannot be).
    std::fs::write(out.path().join("plain"), "").unwrap();
    let target = out.path().join("plain").join("m");
    assert!(write_hf_dir(&model, &target, WeightDtype::F32, false).is_err());
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
}

/// The packed layout of a linear layer as the root package's GPTQ writer gives it:
/// `(suffix, shape, data)` per part, deterministic values.
fn packed_parts(
    model: &Model,
    block: usize,
    kind: LinearKind,
) -> Vec<(&'static str, Vec<usize>, TensorData)> {
    let (out, inp) = model.linear_shape(kind);
    let (groups, seed) = (inp / 16, (block * 7 + kind.index()) as i32);
    let ints = |n: usize, k: i32| -> Vec<i32> {
        (0..n as i32)
            .map(|i| i.wrapping_mul(0x9E37_79B1u32 as i32) ^ (k + seed))
            .collect()
    };
    vec![
        (
            "qweight",
            vec![inp / 8, out],
            TensorData::I32(ints(inp / 8 * out, 1)),
        ),
        (
            "qzeros",
            vec![groups, out / 8],
            TensorData::I32(ints(groups * out / 8, 2)),
        ),
        (
            "scales",
            vec![groups, out],
            TensorData::F16(
                (0..groups * out)
                    .map(|i| f16::from_f32(0.001 * (i % 97) as f32 + 0.01 * seed as f32).to_f32())
                    .collect(),
            ),
        ),
        (
            "g_idx",
            vec![inp],
            TensorData::I32((0..inp as i32).map(|i| i / 16).collect()),
        ),
    ]
}

fn quantization_config() -> serde_json::Value {
    serde_json::json!({
        "quant_method": "gptq", "bits": 4, "group_size": 16, "desc_act": false,
        "sym": true, "checkpoint_format": "gptq", "damp_percent": 0.01,
        "static_groups": false,
    })
}

/// A reference copy of the writer that `DirExtras` replaced (`write_packed_hf_dir`):
/// the float tensors in `dtype` but the packed layers' weights, the packed parts
/// named `{module}.{suffix}`, `quantization_config` inserted into the config.
fn former_packed_writer(model: &Model, dir: &Path, dtype: WeightDtype) {
    use safetensors::{Dtype, View};
    use std::borrow::Cow;
    enum AnyTensor<'a> {
        Float(Vec<usize>, Cow<'a, [f32]>),
        Packed(Vec<usize>, &'a TensorData),
    }
    let st_dtype = match dtype {
        WeightDtype::F32 => Dtype::F32,
        WeightDtype::F16 => Dtype::F16,
        WeightDtype::BF16 => Dtype::BF16,
    };
    struct Out<'a>(AnyTensor<'a>, WeightDtype, Dtype);
    impl View for Out<'_> {
        fn dtype(&self) -> Dtype {
            match &self.0 {
                AnyTensor::Float(..) => self.2,
                AnyTensor::Packed(_, TensorData::I32(_)) => Dtype::I32,
                AnyTensor::Packed(_, TensorData::F16(_)) => Dtype::F16,
                AnyTensor::Packed(_, TensorData::F32(_)) => Dtype::F32,
                AnyTensor::Packed(_, TensorData::U8(_)) => Dtype::U8,
            }
        }
        fn shape(&self) -> &[usize] {
            match &self.0 {
                AnyTensor::Float(s, _) | AnyTensor::Packed(s, _) => s,
            }
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Owned(match &self.0 {
                AnyTensor::Float(_, d) => match self.1 {
                    WeightDtype::F32 => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    WeightDtype::F16 => d
                        .iter()
                        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                        .collect(),
                    WeightDtype::BF16 => d
                        .iter()
                        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                        .collect(),
                },
                AnyTensor::Packed(_, TensorData::I32(v)) => {
                    v.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                AnyTensor::Packed(_, TensorData::F16(v)) => v
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                    .collect(),
                AnyTensor::Packed(_, TensorData::F32(v)) => {
                    v.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                AnyTensor::Packed(_, TensorData::U8(v)) => v.to_vec(),
            })
        }
        fn data_len(&self) -> usize {
            self.data().len()
        }
    }
    std::fs::create_dir(dir).unwrap();
    let mut config = model.config().to_hf_json(dtype.torch_name());
    config
        .as_object_mut()
        .unwrap()
        .insert("quantization_config".into(), quantization_config());
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap() + "\n",
    )
    .unwrap();
    let mut parts = BTreeMap::new();
    for block in 0..model.num_blocks() {
        for kind in LinearKind::ALL {
            parts.insert(kind.hf_name(block), packed_parts(model, block, kind));
        }
    }
    let mut tensors = Vec::new();
    for role in llama_io::TensorRole::all(model.config()) {
        match parts.get(&role.hf_name()) {
            Some(layer) => {
                let name = role.hf_name();
                let module = name.trim_end_matches(".weight");
                for (suffix, shape, data) in layer {
                    tensors.push((
                        format!("{module}.{suffix}"),
                        Out(AnyTensor::Packed(shape.clone(), data), dtype, st_dtype),
                    ));
                }
            }
            None => tensors.push((
                role.hf_name(),
                Out(
                    AnyTensor::Float(role.shape(model.config()), model.tensor(role).unwrap()),
                    dtype,
                    st_dtype,
                ),
            )),
        }
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), &dir.join("model.safetensors"))
        .unwrap();
}

/// Every linear layer replaced by its packed parts, through the generic extras.
fn packed_extras(model: &Model) -> DirExtras<'static> {
    let mut extras = DirExtras::default();
    for block in 0..model.num_blocks() {
        for kind in LinearKind::ALL {
            let name = kind.hf_name(block);
            let module = name.trim_end_matches(".weight").to_string();
            for (suffix, shape, data) in packed_parts(model, block, kind) {
                extras.tensors.push(
                    NamedTensor {
                        name: format!("{module}.{suffix}"),
                        shape,
                        data,
                    }
                    .into(),
                );
            }
            extras.omitted.insert(name);
        }
    }
    extras
        .config
        .insert("quantization_config".into(), quantization_config());
    extras
}

#[test]
fn extras_write_a_packed_directory_byte_identical_to_the_former_writer() {
    for spec in [TINY, Spec { tied: true, ..TINY }] {
        let (_src, _w, model) = tiny_model(&spec, 57);
        for dtype in [WeightDtype::F32, WeightDtype::F16] {
            let out = TempDir::new("writer-extras");
            let (new, old) = (out.path().join("new"), out.path().join("old"));
            write_hf_dir_with(&model, &new, dtype, false, &packed_extras(&model)).unwrap();
            former_packed_writer(&model, &old, dtype);
            // The same extras made when written, each counted once.
            let made_dir = out.path().join("made");
            let calls = std::cell::Cell::new(0);
            let mut made = packed_extras(&model);
            made.tensors = (made.tensors.into_iter())
                .map(|t| match t {
                    ExtraTensor::Given(t) => ExtraTensor::Made {
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                        dtype: t.data.dtype(),
                        make: Box::new({
                            let calls = &calls;
                            move || {
                                calls.set(calls.get() + 1);
                                Ok(t.data.clone())
                            }
                        }),
                    },
                    made => made,
                })
                .collect();
            let extras = made.tensors.len();
            write_hf_dir_with(&model, &made_dir, dtype, false, &made).unwrap();
            assert_eq!(calls.get(), extras);
            for file in ["config.json", "model.safetensors"] {
                assert!(
                    std::fs::read(new.join(file)).unwrap()
                        == std::fs::read(old.join(file)).unwrap(),
                    "{file} differs ({dtype:?})"
                );
                assert!(
                    std::fs::read(new.join(file)).unwrap()
                        == std::fs::read(made_dir.join(file)).unwrap(),
                    "{file} of made extras differs ({dtype:?})"
                );
            }
            let listing = |d: &Path| {
                let mut names: Vec<_> = std::fs::read_dir(d)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                names
            };
            assert_eq!(listing(&new), listing(&old));
            // A packed directory is refused by the reader, by name.
            let err = Model::load(&new).unwrap_err().to_string();
            assert!(err.contains("gptq"), "{err}");
        }
    }
}

#[test]
fn default_extras_write_what_write_hf_dir_writes() {
    let (_src, _w, model) = tiny_model(&TINY, 58);
    let out = TempDir::new("writer-default-extras");
    let (a, b) = (out.path().join("a"), out.path().join("b"));
    write_hf_dir(&model, &a, WeightDtype::BF16, false).unwrap();
    write_hf_dir_with(&model, &b, WeightDtype::BF16, false, &DirExtras::default()).unwrap();
    for file in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// Writes `extras` and expects an error that names `what`, with nothing written.
fn assert_rejected(model: &Model, extras: &DirExtras<'_>, what: &str) {
    let out = TempDir::new("writer-bad-extras");
    let target = out.path().join("m");
    let err = write_hf_dir_with(model, &target, WeightDtype::F32, false, extras)
        .unwrap_err()
        .to_string();
    assert!(err.contains(what), "the error names `{what}`: {err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "{err}");
}

#[test]
fn invalid_extras_are_errors_naming_the_tensor_or_key() {
    let (_src, _w, model) = tiny_model(&TINY, 59);
    let extra = |name: &str, shape: Vec<usize>, n: usize| NamedTensor {
        name: name.into(),
        shape,
        data: TensorData::I32(vec![7; n]),
    };

    // An omitted name that is not a model tensor (here: a block outside the model).
    let mut extras = DirExtras::default();
    extras.omitted.insert(LinearKind::Q.hf_name(2));
    assert_rejected(&model, &extras, "model.layers.2.self_attn.q_proj.weight");

    // An extra named as a model tensor that is still written.
    let taken = LinearKind::Up.hf_name(1);
    let extras = DirExtras {
        tensors: vec![extra(&taken, vec![2], 2).into()],
        ..DirExtras::default()
    };
    assert_rejected(&model, &extras, &taken);
    // ... which is fine once that tensor is omitted.
    let mut extras = extras;
    extras.omitted.insert(taken.clone());
    let out = TempDir::new("writer-replace");
    write_hf_dir_with(
        &model,
        &out.path().join("m"),
        WeightDtype::F32,
        false,
        &extras,
    )
    .unwrap();

    // Two extras of one name.
    let extras = DirExtras {
        tensors: vec![
            extra("extra.a", vec![1], 1).into(),
            extra("extra.a", vec![2], 2).into(),
        ],
        ..DirExtras::default()
    };
    assert_rejected(&model, &extras, "extra.a");

    // A shape whose product is not the number of values.
    let extras = DirExtras {
        tensors: vec![extra("extra.b", vec![2, 3], 5).into()],
        ..DirExtras::default()
    };
    assert_rejected(&model, &extras, "extra.b");
    let extras = DirExtras {
        tensors: vec![
            NamedTensor {
                name: "extra.c".into(),
                shape: vec![4],
                data: TensorData::F16(vec![0.5; 3]),
            }
            .into(),
        ],
        ..DirExtras::default()
    };
    assert_rejected(&model, &extras, "extra.c");
    // A made tensor of another length or dtype than declared, or whose making fails:
    // named, and nothing is written.
    let made = |name: &str, dtype, data: TensorData| ExtraTensor::Made {
        name: name.into(),
        shape: vec![2, 2],
        dtype,
        make: Box::new(move || Ok(data.clone())),
    };
    for extras in [
        DirExtras {
            tensors: vec![made("extra.d", Dtype::I32, TensorData::I32(vec![1; 3]))],
            ..DirExtras::default()
        },
        DirExtras {
            tensors: vec![made("extra.d", Dtype::F16, TensorData::I32(vec![1; 4]))],
            ..DirExtras::default()
        },
        DirExtras {
            tensors: vec![ExtraTensor::Made {
                name: "extra.d".into(),
                shape: vec![1],
                dtype: Dtype::U8,
                make: Box::new(|| Err("its source is gone".into())),
            }],
            ..DirExtras::default()
        },
        DirExtras {
            tensors: vec![made("extra.d", Dtype::BF16, TensorData::F32(vec![1.0; 4]))],
            ..DirExtras::default()
        },
    ] {
        assert_rejected(&model, &extras, "extra.d");
    }

    // A config key the model's config already has.
    let mut extras = DirExtras::default();
    extras.config.insert("hidden_size".into(), 1.into());
    assert_rejected(&model, &extras, "hidden_size");
}

/// The weight map of a written sharded directory: tensor name -> shard file.
fn weight_map(dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    (index["weight_map"].as_object().unwrap().iter())
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// The shard group a tensor belongs to: `Some(N)` under `model.layers.N.`.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_large_directory_is_written_in_shards_of_whole_blocks() {
    let spec = Spec { layers: 5, ..TINY };
    let (_src, _weights, model) = tiny_model(&spec, 71);
    let out = TempDir::new("writer-shards");
    for (name, extras) in [
        ("plain", DirExtras::default()),
        ("packed", packed_extras(&model)),
    ] {
        let single = out.path().join(format!("{name}-single"));
        write_hf_dir_with(&model, &single, WeightDtype::F32, false, &extras).unwrap();
        let single_bytes = std::fs::metadata(single.join("model.safetensors"))
            .unwrap()
            .len();
        // Room for a third of the tensors.
        let max = single_bytes as usize / 3;
        let dir = out.path().join(name);
        llama_io::write_hf_dir_sharded(&model, &dir, WeightDtype::F32, false, &extras, max)
            .unwrap();
        assert!(!dir.join("model.safetensors").exists(), "{name}");
        let map = weight_map(&dir);
        let files: BTreeSet<&String> = map.values().collect();
        assert!(files.len() >= 3, "{name}: {files:?}");
        // Every tensor in the shard the index names, each shard within the limit
        // unless it holds one group, a block's tensors together, in block order.
        let mut written = BTreeSet::new();
        let mut first_shard_of_block = BTreeMap::new();
        for file in &files {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            let groups: BTreeSet<Option<usize>> = names.iter().map(|n| block_of(n)).collect();
            let data: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
            assert!(
                data <= max || groups.len() == 1,
                "{name} {file}: {data} > {max}"
            );
            for n in names {
                assert_eq!(&map[&n], *file, "{name}: {n}");
                if let Some(b) = block_of(&n) {
                    let shard = first_shard_of_block.entry(b).or_insert((*file).clone());
                    assert_eq!(shard, *file, "{name}: block {b} split");
                }
                written.insert(n);
            }
        }
        assert_eq!(written, map.keys().cloned().collect());
        let shards: Vec<&String> = first_shard_of_block.values().collect();
        assert!(
            shards.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {shards:?}"
        );
        assert_eq!(map["model.embed_tokens.weight"], **files.first().unwrap());
        assert_eq!(map["lm_head.weight"], **files.last().unwrap());
        let single = safetensors::SafeTensors::deserialize(
            &std::fs::read(single.join("model.safetensors")).unwrap(),
        )
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect::<BTreeSet<_>>();
        assert_eq!(written, single, "{name}");
        if name == "plain" {
            let back = Model::load(&dir).unwrap();
            assert_eq!(tensors_of(&back), tensors_of(&model));
        }
    }
    // A limit below any block: a shard per block, the embedding and the head apart.
    let dir = out.path().join("per-block");
    llama_io::write_hf_dir_sharded(
        &model,
        &dir,
        WeightDtype::F16,
        false,
        &DirExtras::default(),
        1,
    )
    .unwrap();
    let files: BTreeSet<String> = weight_map(&dir).into_values().collect();
    assert_eq!(files.len(), spec.layers + 2);
    assert!(files.contains("model-00007-of-00007.safetensors"));
}
