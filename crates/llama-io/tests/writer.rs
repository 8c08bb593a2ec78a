//! The Hugging Face directory writer: exact f32 round trip, f16/bf16 rounding,
//! the config a `transformers` loader needs, the tokenizer, atomic replacement.

mod common;

use common::{Spec, TINY, TempDir, Tensors};
use half::{bf16, f16};
use llama_io::{LinearKind, Model, WeightDtype, write_hf_dir};

fn tensors_of(model: &Model) -> Tensors {
    model
        .hf_tensors()
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
    let target = out.path().join("missing-parent").join("m");
    assert!(write_hf_dir(&model, &target, WeightDtype::F32, false).is_err());
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
