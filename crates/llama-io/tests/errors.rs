//! Malformed or unsupported inputs give an error value naming the file and, where
//! there is one, the tensor or field, never a panic.

mod common;

use std::path::Path;

use common::{GGML_F32, GTensor, GValue, TINY, TempDir, Tensors};
use llama_io::{LlamaIoError, Model};

/// Loads `path`, expects an error, and checks its message contains every needle.
fn expect_error(path: &Path, needles: &[&str]) -> LlamaIoError {
    let err = Model::load(path).expect_err("loading must fail");
    let msg = err.to_string();
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error `{msg}` does not mention `{needle}`"
        );
    }
    err
}

/// A valid HF directory, then `edit` applied to its config and tensors.
fn hf_dir(tag: &str, edit: impl FnOnce(&mut serde_json::Value, &mut Tensors)) -> TempDir {
    let dir = TempDir::new(tag);
    let mut config = common::config_json(&TINY);
    let mut tensors = common::random_weights(&TINY, 31);
    edit(&mut config, &mut tensors);
    common::write_hf(dir.path(), &TINY, &tensors);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn hf_unsupported_configs() {
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("model_type", "mistral".into(), "model_type"),
        ("attention_bias", true.into(), "attention_bias"),
        ("mlp_bias", true.into(), "mlp_bias"),
        ("num_local_experts", 8.into(), "num_local_experts"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "rope_scaling",
        ),
        ("hidden_act", "gelu".into(), "hidden_act"),
    ];
    for (key, value, needle) in cases {
        let dir = hf_dir(key, |c, _| {
            c[key] = value.clone();
        });
        let err = expect_error(dir.path(), &["config.json", needle]);
        assert!(
            matches!(err, LlamaIoError::Unsupported { .. }),
            "{key}: {err:?}"
        );
    }
}

#[test]
fn hf_malformed_configs() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("hidden_size", serde_json::Value::Null, "hidden_size"),
        ("num_key_value_heads", 3.into(), "num_key_value_heads"),
        ("vocab_size", "many".into(), "vocab_size"),
        ("rope_theta", (-1.0).into(), "rope_theta"),
    ];
    for (key, value, needle) in cases {
        let dir = hf_dir(key, |c, _| {
            c[key] = value.clone();
        });
        let err = expect_error(dir.path(), &["config.json", needle]);
        assert!(matches!(err, LlamaIoError::Format { .. }), "{key}: {err:?}");
    }
    let dir = hf_dir("notjson", |_, _| {});
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    expect_error(dir.path(), &["config.json", "JSON"]);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = expect_error(dir.path(), &["config.json"]);
    assert!(matches!(err, LlamaIoError::Io { .. }));
}

#[test]
fn hf_tensor_problems() {
    let dir = hf_dir("bias", |_, t| {
        t.insert(
            "model.layers.0.self_attn.q_proj.bias".into(),
            (vec![64], vec![0.0; 64]),
        );
    });
    let err = expect_error(
        dir.path(),
        &["model.safetensors", "model.layers.0.self_attn.q_proj.bias"],
    );
    assert!(matches!(err, LlamaIoError::Unsupported { .. }));

    let dir = hf_dir("missing", |_, t| {
        t.remove("model.layers.1.self_attn.k_proj.weight");
    });
    let err = expect_error(
        dir.path(),
        &[
            "model.safetensors",
            "model.layers.1.self_attn.k_proj.weight",
        ],
    );
    assert!(matches!(err, LlamaIoError::MissingTensor { .. }));

    let dir = hf_dir("nohead", |_, t| {
        t.remove("lm_head.weight");
    });
    expect_error(dir.path(), &["lm_head.weight"]);

    let dir = hf_dir("shape", |_, t| {
        t.insert(
            "model.layers.0.mlp.up_proj.weight".into(),
            (vec![64, 96], vec![0.0; 64 * 96]),
        );
    });
    let err = expect_error(
        dir.path(),
        &[
            "model.safetensors",
            "model.layers.0.mlp.up_proj.weight",
            "[96, 64]",
        ],
    );
    assert!(matches!(err, LlamaIoError::Shape { .. }));

    let dir = hf_dir("nan", |_, t| {
        t.get_mut("model.norm.weight").unwrap().1[3] = f32::NAN;
    });
    expect_error(
        dir.path(),
        &["model.safetensors", "model.norm.weight", "non-finite"],
    );

    // An integer tensor.
    let dir = hf_dir("dtype", |_, _| {});
    let weights = common::random_weights(&TINY, 31);
    let mut list: Vec<_> = weights
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), common::f32_bytes(d), "F32"))
        .collect();
    list[0].3 = "I32";
    std::fs::write(
        dir.path().join("model.safetensors"),
        common::safetensors_bytes(&list),
    )
    .unwrap();
    let err = expect_error(dir.path(), &["model.safetensors", &list[0].0, "I32"]);
    assert!(matches!(err, LlamaIoError::Unsupported { .. }));
}

#[test]
fn hf_truncated_and_garbage_weights() {
    let dir = hf_dir("trunc", |_, _| {});
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 20, 7, 0] {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let err = expect_error(dir.path(), &["model.safetensors"]);
        assert!(
            matches!(err, LlamaIoError::Format { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    std::fs::write(&file, [0xffu8; 64]).unwrap();
    expect_error(dir.path(), &["model.safetensors"]);
    std::fs::remove_file(&file).unwrap();
    expect_error(dir.path(), &["model.safetensors"]);
}

#[test]
fn hf_bad_shard_index() {
    let dir = hf_dir("index", |_, _| {});
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"weight_map": {"model.norm.weight": "absent.safetensors"}}"#,
    )
    .unwrap();
    expect_error(dir.path(), &["absent.safetensors"]);
    std::fs::write(
        &index,
        r#"{"weight_map": {"model.norm.weight": "../escape.safetensors"}}"#,
    )
    .unwrap();
    expect_error(
        dir.path(),
        &["model.safetensors.index.json", "model.norm.weight"],
    );
    std::fs::write(
        &index,
        r#"{"weight_map": {"not.in.the.file": "model.safetensors"}}"#,
    )
    .unwrap();
    expect_error(dir.path(), &["model.safetensors", "not.in.the.file"]);
    std::fs::write(&index, r#"{"no_map": 1}"#).unwrap();
    expect_error(dir.path(), &["model.safetensors.index.json", "weight_map"]);
}

/// A valid GGUF file's parts, then `edit` applied before writing.
fn gguf_file(
    dir: &TempDir,
    edit: impl FnOnce(&mut Vec<(&'static str, GValue)>, &mut Vec<GTensor>),
) -> std::path::PathBuf {
    let weights = common::random_weights(&TINY, 32);
    let mut meta = common::gguf_metadata(&TINY);
    let mut tensors = common::gguf_tensors_f32(&TINY, &weights);
    edit(&mut meta, &mut tensors);
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, common::gguf_bytes(3, &meta, &tensors)).unwrap();
    path
}

fn set_meta(meta: &mut Vec<(&'static str, GValue)>, key: &'static str, value: GValue) {
    meta.retain(|(k, _)| *k != key);
    meta.push((key, value));
}

#[test]
fn gguf_unsupported_models() {
    let dir = TempDir::new("gguf-unsup");
    let cases: Vec<(&'static str, GValue, &str)> = vec![
        ("general.architecture", GValue::Str("qwen2".into()), "qwen2"),
        ("llama.expert_count", GValue::U32(8), "expert_count"),
        (
            "llama.rope.scaling.type",
            GValue::Str("linear".into()),
            "linear",
        ),
        (
            "llama.rope.dimension_count",
            GValue::U32(8),
            "dimension_count",
        ),
    ];
    for (key, value, needle) in cases {
        let path = gguf_file(&dir, |m, _| set_meta(m, key, value));
        let err = expect_error(&path, &["m.gguf", needle]);
        assert!(
            matches!(err, LlamaIoError::Unsupported { .. }),
            "{key}: {err:?}"
        );
    }
    let path = gguf_file(&dir, |_, t| {
        t.push(GTensor {
            name: "blk.0.attn_q.bias".into(),
            shape: vec![64],
            ggml_type: GGML_F32,
            bytes: common::f32_bytes(&[0.0; 64]),
        })
    });
    let err = expect_error(&path, &["m.gguf", "blk.0.attn_q.bias"]);
    assert!(matches!(err, LlamaIoError::Unsupported { .. }));
    let path = gguf_file(&dir, |_, t| {
        t.push(GTensor {
            name: "blk.0.ffn_gate_exps.weight".into(),
            shape: vec![2, 96, 64],
            ggml_type: GGML_F32,
            bytes: common::f32_bytes(&[0.0; 2 * 96 * 64]),
        })
    });
    expect_error(&path, &["m.gguf", "blk.0.ffn_gate_exps.weight"]);
    // A quantization type candle does not dequantize from a file (Q8_1, id 9, 36
    // bytes per 32 values).
    let path = gguf_file(&dir, |_, t| {
        let slot = t
            .iter_mut()
            .find(|x| x.name == "blk.1.ffn_up.weight")
            .unwrap();
        slot.ggml_type = 9;
        slot.bytes = vec![0u8; 96 * 64 / 32 * 36];
    });
    let err = expect_error(&path, &["m.gguf", "blk.1.ffn_up.weight", "Q8_1"]);
    assert!(matches!(err, LlamaIoError::Unsupported { .. }));
}

#[test]
fn gguf_malformed_files() {
    let dir = TempDir::new("gguf-bad");
    let path = gguf_file(&dir, |_, t| t.retain(|x| x.name != "blk.1.attn_k.weight"));
    let err = expect_error(&path, &["m.gguf", "blk.1.attn_k.weight"]);
    assert!(matches!(err, LlamaIoError::MissingTensor { .. }));

    let path = gguf_file(&dir, |_, t| {
        let slot = t
            .iter_mut()
            .find(|x| x.name == "blk.0.attn_v.weight")
            .unwrap();
        slot.shape = vec![16, 128];
    });
    let err = expect_error(&path, &["m.gguf", "blk.0.attn_v.weight", "[32, 64]"]);
    assert!(matches!(err, LlamaIoError::Shape { .. }));

    let path = gguf_file(&dir, |m, _| m.retain(|(k, _)| *k != "llama.block_count"));
    expect_error(&path, &["m.gguf", "llama.block_count"]);

    let path = gguf_file(&dir, |m, _| {
        set_meta(m, "llama.embedding_length", GValue::Str("wide".into()))
    });
    expect_error(&path, &["m.gguf", "llama.embedding_length"]);

    let path = gguf_file(&dir, |_, t| {
        let slot = t
            .iter_mut()
            .find(|x| x.name == "output_norm.weight")
            .unwrap();
        slot.bytes = common::f32_bytes(&[f32::INFINITY; 64]);
    });
    expect_error(&path, &["m.gguf", "output_norm.weight", "non-finite"]);

    // Tensor data cut short in the middle of the file: it runs into the next tensor.
    let path = gguf_file(&dir, |_, t| {
        let slot = t
            .iter_mut()
            .find(|x| x.name == "blk.0.attn_v.weight")
            .unwrap();
        slot.bytes.truncate(10);
    });
    expect_error(&path, &["m.gguf", "blk.0.attn_v.weight", "overlap"]);

    // Truncations anywhere: in the header, the metadata, the tensor infos, the data.
    let path = gguf_file(&dir, |_, _| {});
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 3, 8, 30, 200, 900, bytes.len() / 2, bytes.len() - 40] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = expect_error(&path, &["m.gguf"]);
        assert!(
            matches!(err, LlamaIoError::Format { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    // Wrong magic, GGUF version 1.
    let mut bad = bytes.clone();
    bad[0] = b'X';
    std::fs::write(&path, &bad).unwrap();
    expect_error(&path, &["m.gguf"]);
    let mut v1 = bytes.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, &v1).unwrap();
    expect_error(&path, &["m.gguf"]);
}

#[test]
fn paths_that_are_not_models() {
    let dir = TempDir::new("paths");
    expect_error(&dir.path().join("absent.gguf"), &["absent.gguf"]);
    let txt = dir.path().join("weights.bin");
    std::fs::write(&txt, b"hello").unwrap();
    expect_error(&txt, &["weights.bin", ".gguf"]);
}

/// GGUF headers that declare more than the file holds (strings, arrays, entry counts,
/// dimensions), or nest arrays without end, are refused by a walk over the header before
/// candle's parser could allocate or recurse on them; each error names the entry.
#[test]
fn gguf_headers_that_declare_too_much_fail_before_allocating() {
    let dir = TempDir::new("gguf-huge");
    let path = dir.path().join("h.gguf");
    let header = |n_tensors: u64, n_kv: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    };
    let key = |b: &mut Vec<u8>, k: &str| {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
    };
    let mut cases: Vec<(Vec<u8>, &[&str])> = Vec::new();
    // Entry counts no file of this size can hold.
    cases.push((header(u64::MAX, 0), &["tensors"]));
    cases.push((header(0, 1 << 60), &["metadata entries"]));
    // A key, then a string value, of 2^62 bytes.
    let mut b = header(0, 1);
    b.extend((1u64 << 62).to_le_bytes());
    b.extend([0u8; 64]);
    cases.push((b, &["metadata key 0", "string"]));
    let mut b = header(0, 1);
    key(&mut b, "general.name");
    b.extend(8u32.to_le_bytes());
    b.extend((1u64 << 62).to_le_bytes());
    b.extend([0u8; 64]);
    cases.push((b, &["general.name", "bytes"]));
    // An array of 2^60 u32 values, and arrays nested 100 deep.
    let mut b = header(0, 1);
    key(&mut b, "tokenizer.ggml.token_type");
    b.extend(9u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes());
    b.extend([0u8; 64]);
    cases.push((b, &["tokenizer.ggml.token_type", "array elements"]));
    let mut b = header(0, 1);
    key(&mut b, "deep");
    b.extend(9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend(vec![0u8; 64]);
    cases.push((b, &["deep", "nests"]));
    // An unknown value type.
    let mut b = header(0, 1);
    key(&mut b, "odd");
    b.extend(99u32.to_le_bytes());
    b.extend(vec![0u8; 16]);
    cases.push((b, &["odd", "value type 99"]));
    // A tensor with 2^31 dimensions, one whose dimensions multiply past 2^64, and one
    // declaring far more values than the file holds.
    let tensor = |dims: &[u64], n_dims: u32| {
        let mut b = header(1, 0);
        key(&mut b, "token_embd.weight");
        b.extend(n_dims.to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(vec![0u8; 64]);
        b
    };
    cases.push((tensor(&[], 1 << 31), &["token_embd.weight", "dimensions"]));
    cases.push((
        tensor(&[1 << 40, 1 << 40], 2),
        &["token_embd.weight", "more values"],
    ));
    cases.push((tensor(&[1 << 30], 1), &["token_embd.weight", "more values"]));
    for (bytes, needles) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = expect_error(&path, &["h.gguf"]);
        let text = err.to_string();
        assert!(
            matches!(err, LlamaIoError::Format { .. }) && needles.iter().all(|n| text.contains(n)),
            "{needles:?}: {text}"
        );
        let inspected = llama_io::inspect(&path).unwrap_err().to_string();
        assert_eq!(inspected, text);
    }
}

/// Found by the fuzz target `tokenizer_json`: a `tokenizer.json` whose JSON breaks inside
/// the decoder made the `tokenizers` library panic (`expect("Helper")`); it is an error
/// naming the file.
#[test]
fn a_tokenizer_json_with_broken_json_is_an_error_not_a_panic() {
    let dir = TempDir::new("tok-json");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(
        &path,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":{"type"se_regex":true},"model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#,
    )
    .unwrap();
    let err = llama_io::tokenizer::tokenizer_from_json(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not JSON"),
        "{err}"
    );
}

/// Found by the fuzz target `gguf` (an hour's run, out of memory after 251,098 inputs):
/// a GGUF whose `llama.block_count` was mutated to about four billion made the reader
/// list every tensor role of that many blocks before reading the tensor table (5 GB).
/// When the file's tensors cannot hold the block count, the first missing tensor is
/// named before anything is sized by the count, in GGUF files and in Hugging Face
/// directories (whose reader reserved the blocks' weights).
#[test]
fn a_block_count_beyond_the_tensors_is_refused_before_allocating() {
    let dir = TempDir::new("huge-blocks");
    let path = gguf_file(&dir, |meta, _| {
        set_meta(meta, "llama.block_count", GValue::U32(u32::MAX));
    });
    let err = expect_error(&path, &["m.gguf", "blk.2.attn_norm.weight"]);
    assert!(matches!(err, LlamaIoError::MissingTensor { .. }), "{err}");

    let hf = dir.path().join("hf");
    let weights = common::random_weights(&TINY, 33);
    common::write_hf(&hf, &TINY, &weights);
    let config_path = hf.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["num_hidden_layers"] = serde_json::json!(1u64 << 40);
    std::fs::write(&config_path, config.to_string()).unwrap();
    expect_error(&hf, &["model.layers.2.input_layernorm.weight"]);
}
