//! The GGUF writer: write -> `Model::load` round trips (F32 exact, F16/BF16 as
//! rounded), the Q/K permutation against the data README's rule written out
//! independently, linear layers given encoded by candle's own quantizers (Q8_0 and the
//! K-quants), the tokenizer metadata (copied from a GGUF input, converted from a
//! Hugging Face one), named errors and atomicity.

mod common;

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{GTensor, GValue, Spec, TINY, TempDir, gguf_bytes, gguf_metadata, to_gguf_rows};
use llama_io::gguf::{permute_qk, permute_qk_rows, unpermute_qk_rows};
use llama_io::tokenizer::{LLAMA_CPP_CHKTXT, llama_cpp_chkhsh};
use llama_io::{
    EncodedBytes, EncodedLinear, GgufFloat, GgufLinears, GgufOptions, LinearKind, LlamaIoError,
    Model, NamedTensor, TensorData, TensorRole, TokenizerSource, WeightDtype, write_gguf,
    write_hf_dir,
};

/// A model whose widths are multiples of 256 (K-quant blocks).
const WIDE: Spec = Spec {
    hidden: 256,
    intermediate: 512,
    layers: 1,
    heads: 4,
    kv_heads: 2,
    vocab: 64,
    tied: true,
    theta: 100_000.0,
    eps: 1e-5,
};

/// The model of `spec` with random weights, read from a Hugging Face directory
/// written by hand.
fn hf_model(dir: &TempDir, spec: &Spec, seed: u64) -> Model {
    let path = dir.path().join("hf");
    common::write_hf(&path, spec, &common::random_weights(spec, seed));
    Model::load(&path).unwrap()
}

fn read_content(path: &Path) -> Content {
    Content::read(&mut std::fs::File::open(path).unwrap()).unwrap()
}

/// A tensor of a GGUF file as candle dequantizes it, in file row order, and its type.
fn raw_tensor(path: &Path, name: &str) -> (GgmlDType, Vec<f32>) {
    let content = read_content(path);
    let mut file = std::fs::File::open(path).unwrap();
    let q = content.tensor(&mut file, name, &Device::Cpu).unwrap();
    let data = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (q.dtype(), data)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Every tensor of `a` and `b` equal bit for bit.
fn assert_same_weights(a: &Model, b: &Model) {
    for ((name, shape, x), (_, shape_b, y)) in a
        .hf_tensors()
        .unwrap()
        .into_iter()
        .zip(b.hf_tensors().unwrap())
    {
        assert_eq!(shape, shape_b, "{name}");
        assert_eq!(bits(&x), bits(&y), "{name}");
    }
}

/// `weight` (out x in, HF order) quantized by candle: the bytes and their dequantization.
fn candle_encode(weight: &[f32], out: usize, inp: usize, dtype: GgmlDType) -> (Vec<u8>, Vec<f32>) {
    let t = Tensor::from_vec(weight.to_vec(), (out, inp), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let bytes = q.data().unwrap().to_vec();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (bytes, deq)
}

#[test]
fn f32_round_trip_is_exact_and_metadata_is_llama_cpps() {
    let dir = TempDir::new("gguf-w-f32");
    let model = hf_model(&dir, &TINY, 1);
    let path = dir.path().join("out.gguf");
    let options = GgufOptions {
        name: Some("tiny".into()),
        file_type: Some(0),
        float: GgufFloat::F32,
        ..GgufOptions::default()
    };
    write_gguf(&model, &path, &options, &GgufLinears::new()).unwrap();
    let back = Model::load(&path).unwrap();
    assert_eq!(back.config(), model.config());
    assert_same_weights(&model, &back);

    let content = read_content(&path);
    assert_eq!(
        content.magic,
        candle_core::quantized::gguf_file::VersionedMagic::GgufV3
    );
    let meta = &content.metadata;
    let s = |k: &str| meta[k].to_string().unwrap().clone();
    let u = |k: &str| meta[k].to_u32().unwrap();
    assert_eq!(s("general.architecture"), "llama");
    assert_eq!(s("general.name"), "tiny");
    assert_eq!(u("general.file_type"), 0);
    assert_eq!(u("llama.block_count"), 2);
    assert_eq!(u("llama.context_length"), 512);
    assert_eq!(u("llama.embedding_length"), 64);
    assert_eq!(u("llama.feed_forward_length"), 96);
    assert_eq!(u("llama.attention.head_count"), 4);
    assert_eq!(u("llama.attention.head_count_kv"), 2);
    assert_eq!(u("llama.rope.dimension_count"), 16);
    assert_eq!(u("llama.vocab_size"), 300);
    assert_eq!(meta["llama.rope.freq_base"].to_f32().unwrap(), 10_000.0);
    assert_eq!(
        meta["llama.attention.layer_norm_rms_epsilon"]
            .to_f32()
            .unwrap(),
        1e-5
    );
    // The head dimension is hidden / heads: no key/value length; all float: no
    // quantization version.
    assert!(!meta.contains_key("llama.attention.key_length"));
    assert!(!meta.contains_key("general.quantization_version"));
    assert!(content.tensor_infos.contains_key("output.weight"));
    assert_eq!(content.tensor_infos.len(), 1 + 2 * 9 + 2);
    for info in content.tensor_infos.values() {
        assert_eq!(info.ggml_dtype, GgmlDType::F32);
        assert_eq!(info.offset % 32, 0);
    }
}

#[test]
fn q_and_k_rows_are_in_llama_cpp_order() {
    let dir = TempDir::new("gguf-w-perm");
    let hf = common::random_weights(&TINY, 2);
    let path = dir.path().join("hf");
    common::write_hf(&path, &TINY, &hf);
    let model = Model::load(&path).unwrap();
    let out = dir.path().join("out.gguf");
    write_gguf(&model, &out, &GgufOptions::default(), &GgufLinears::new()).unwrap();
    // The rows of the file against the data README's rule, written out in the tests.
    for (proj, gguf, heads) in [("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)] {
        let (shape, data) = &hf[&format!("model.layers.1.self_attn.{proj}.weight")];
        let expected = to_gguf_rows(data, shape[0], shape[1], heads);
        let (_, raw) = raw_tensor(&out, &format!("blk.1.{gguf}.weight"));
        assert_eq!(bits(&raw), bits(&expected), "{proj}");
    }
    // The byte-row permutation is the f32 one on the bytes, and its inverse undoes it.
    let (rows, cols) = (16, 3);
    let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let permuted = permute_qk_rows(&bytes, rows, cols * 4, 2).unwrap();
    let expected: Vec<u8> = permute_qk(&data, rows, cols, 2)
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(permuted, expected);
    assert_eq!(
        unpermute_qk_rows(&permuted, rows, cols * 4, 2).unwrap(),
        bytes
    );
}

#[test]
fn f16_and_bf16_round_trip_as_rounded_and_as_source_keeps_them() {
    let dir = TempDir::new("gguf-w-half");
    let model = hf_model(&dir, &TINY, 3);
    for (float, dtype, round) in [
        (
            GgufFloat::F16,
            GgmlDType::F16,
            (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (GgufFloat::BF16, GgmlDType::BF16, |x: f32| {
            half::bf16::from_f32(x).to_f32()
        }),
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        let options = GgufOptions {
            float,
            ..GgufOptions::default()
        };
        write_gguf(&model, &path, &options, &GgufLinears::new()).unwrap();
        let back = Model::load(&path).unwrap();
        for role in TensorRole::all(model.config()) {
            let want: Vec<f32> = if role.shape(model.config()).len() == 1 {
                model.tensor(role).unwrap().to_vec() // norms stay F32
            } else {
                model
                    .tensor(role)
                    .unwrap()
                    .iter()
                    .map(|&x| round(x))
                    .collect()
            };
            assert_eq!(bits(&back.tensor(role).unwrap()), bits(&want), "{role:?}");
        }
        assert_eq!(back.source_dtype(TensorRole::Embedding), Some(dtype));
        assert_eq!(
            back.source_dtype(TensorRole::FinalNorm),
            Some(GgmlDType::F32)
        );
        // Written again "as the source had it": the same types, the same bytes.
        let named = |float| GgufOptions {
            name: Some("same".into()),
            float,
            ..GgufOptions::default()
        };
        let again = dir.path().join(format!("{dtype:?}-again.gguf"));
        write_gguf(&back, &again, &named(float), &GgufLinears::new()).unwrap();
        let as_source = dir.path().join(format!("{dtype:?}-as-source.gguf"));
        write_gguf(
            &back,
            &as_source,
            &named(GgufFloat::AsSource),
            &GgufLinears::new(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&as_source).unwrap()
        );
    }
    // A model from an f32 directory has F32 sources.
    assert_eq!(
        model.source_dtype(TensorRole::Embedding),
        Some(GgmlDType::F32)
    );
}

#[test]
fn encoded_linears_read_back_as_candles_dequantization() {
    let dir = TempDir::new("gguf-w-q8");
    let model = hf_model(&dir, &TINY, 4);
    let mut linears = GgufLinears::new();
    let mut expected = Vec::new();
    for (block, kind) in [
        (0, LinearKind::Q),
        (0, LinearKind::K),
        (0, LinearKind::V),
        (1, LinearKind::Down),
    ] {
        let (out, inp) = model.linear_shape(kind);
        let weight = model.linear_weight(block, kind).unwrap();
        let (data, deq) = candle_encode(&weight, out, inp, GgmlDType::Q8_0);
        linears.insert(
            (block, kind),
            EncodedLinear {
                dtype: GgmlDType::Q8_0,
                data: data.into(),
            },
        );
        expected.push((block, kind, deq));
    }
    let path = dir.path().join("q8.gguf");
    let options = GgufOptions {
        file_type: Some(7),
        ..GgufOptions::default()
    };
    write_gguf(&model, &path, &options, &linears).unwrap();

    // The same bytes left in a safetensors file and read when written: the same file.
    let named: Vec<NamedTensor> = (linears.iter())
        .map(|(&(block, kind), l)| NamedTensor {
            name: kind.hf_name(block),
            shape: vec![l.data.len()],
            data: TensorData::U8(l.data.read().unwrap().into_owned()),
        })
        .collect();
    let stored_path = dir.path().join("encoded.safetensors");
    safetensors::serialize_to_file(named.iter().map(|t| (&t.name, t)), None, &stored_path).unwrap();
    let mut stored = llama_io::stored_tensors(&stored_path).unwrap();
    let from_file: GgufLinears = (linears.iter())
        .map(|(&(block, kind), l)| {
            let t = stored.remove(&kind.hf_name(block)).unwrap();
            let data = EncodedBytes::Stored(t);
            (
                (block, kind),
                EncodedLinear {
                    dtype: l.dtype,
                    data,
                },
            )
        })
        .collect();
    // (Same file name: `general.name` is the file stem.)
    std::fs::create_dir(dir.path().join("from-file")).unwrap();
    let again = dir.path().join("from-file/q8.gguf");
    write_gguf(&model, &again, &options, &from_file).unwrap();
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&path).unwrap());

    let content = read_content(&path);
    assert_eq!(
        content.tensor_infos["blk.0.attn_q.weight"].ggml_dtype,
        GgmlDType::Q8_0
    );
    assert_eq!(
        content.tensor_infos["blk.0.attn_output.weight"].ggml_dtype,
        GgmlDType::F32
    );
    assert_eq!(
        content.metadata["general.quantization_version"]
            .to_u32()
            .unwrap(),
        2
    );
    let back = Model::load(&path).unwrap();
    for (block, kind, deq) in &expected {
        assert_eq!(
            bits(&back.linear_weight(*block, *kind).unwrap()),
            bits(deq),
            "{kind:?}"
        );
    }
    // The layers not given are written in float, exactly.
    assert_eq!(
        bits(&back.linear_weight(0, LinearKind::O).unwrap()),
        bits(&model.linear_weight(0, LinearKind::O).unwrap())
    );
    assert_eq!(
        back.source_dtype(TensorRole::Linear(0, LinearKind::Q)),
        Some(GgmlDType::Q8_0)
    );
}

#[test]
fn every_type_candle_dequantizes_is_read() {
    let dir = TempDir::new("gguf-w-kq");
    let model = hf_model(&dir, &WIDE, 5);
    let types = [
        (LinearKind::Q, GgmlDType::Q4K),
        (LinearKind::K, GgmlDType::Q2K),
        (LinearKind::V, GgmlDType::Q3K),
        (LinearKind::O, GgmlDType::Q5K),
        (LinearKind::Gate, GgmlDType::Q5_0),
        (LinearKind::Up, GgmlDType::Q5_1),
        (LinearKind::Down, GgmlDType::Q6K),
    ];
    let mut linears = GgufLinears::new();
    let mut expected = Vec::new();
    for (kind, dtype) in types {
        let (out, inp) = model.linear_shape(kind);
        let (data, deq) = candle_encode(&model.linear_weight(0, kind).unwrap(), out, inp, dtype);
        linears.insert(
            (0, kind),
            EncodedLinear {
                dtype,
                data: data.into(),
            },
        );
        expected.push((kind, dtype, deq));
    }
    let path = dir.path().join("k.gguf");
    write_gguf(&model, &path, &GgufOptions::default(), &linears).unwrap();
    let back = Model::load(&path).unwrap();
    for (kind, dtype, deq) in &expected {
        assert_eq!(
            bits(&back.linear_weight(0, *kind).unwrap()),
            bits(deq),
            "{dtype:?}"
        );
        assert_eq!(
            back.source_dtype(TensorRole::Linear(0, *kind)),
            Some(*dtype)
        );
    }
    // The rest (Q4_0, Q4_1, Q8_0 and the floats) by the embedding, in each type.
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::BF16,
    ] {
        let emb = model.embedding();
        let (bytes, deq) = candle_encode(emb, WIDE.vocab, WIDE.hidden, dtype);
        let mut tensors = vec![GTensor {
            name: "token_embd.weight".into(),
            shape: vec![WIDE.vocab, WIDE.hidden],
            ggml_type: llama_io::gguf::ggml_type_id(dtype),
            bytes,
        }];
        let (_, raw) = raw_tensor(&path, "output_norm.weight");
        tensors.push(GTensor {
            name: "output_norm.weight".into(),
            shape: vec![WIDE.hidden],
            ggml_type: 0,
            bytes: common::f32_bytes(&raw),
        });
        for role in TensorRole::all(model.config()) {
            if matches!(role, TensorRole::Embedding | TensorRole::FinalNorm) {
                continue;
            }
            let name = role.gguf_name();
            let (_, raw) = raw_tensor(&path, &name);
            tensors.push(GTensor {
                name,
                shape: role.shape(model.config()),
                ggml_type: 0,
                bytes: common::f32_bytes(&raw),
            });
        }
        let file = dir.path().join(format!("emb-{dtype:?}.gguf"));
        std::fs::write(&file, gguf_bytes(3, &gguf_metadata(&WIDE), &tensors)).unwrap();
        let m = Model::load(&file).unwrap();
        assert_eq!(bits(m.embedding()), bits(&deq), "{dtype:?}");
    }
}

/// A one-layer WIDE GGUF file whose `blk.0.attn_q.weight` has GGML type `id` with
/// `bytes`, every other tensor F32 zeros.
fn gguf_with_q_type(path: &Path, id: u32, bytes: Vec<u8>) {
    let model_roles = {
        let config = llama_io::LlamaConfig {
            hidden_size: WIDE.hidden,
            intermediate_size: WIDE.intermediate,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            vocab_size: WIDE.vocab,
            rope_theta: 1e4,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
            max_position_embeddings: 512,
            bos_token_id: None,
            eos_token_id: None,
        };
        TensorRole::all(&config)
            .into_iter()
            .map(|r| (r.gguf_name(), r.shape(&config)))
            .collect::<Vec<_>>()
    };
    let tensors: Vec<GTensor> = model_roles
        .into_iter()
        .map(|(name, shape)| {
            if name == "blk.0.attn_q.weight" {
                GTensor {
                    name,
                    shape,
                    ggml_type: id,
                    bytes: bytes.clone(),
                }
            } else {
                let n: usize = shape.iter().product();
                GTensor {
                    name,
                    shape,
                    ggml_type: 0,
                    bytes: vec![0; 4 * n],
                }
            }
        })
        .collect();
    std::fs::write(path, gguf_bytes(3, &gguf_metadata(&WIDE), &tensors)).unwrap();
}

#[test]
fn types_candle_cannot_read_are_named_errors() {
    let dir = TempDir::new("gguf-w-unsup");
    // Q8_1: known to candle, not dequantized from files (36 bytes per 32 values).
    let path = dir.path().join("q8_1.gguf");
    gguf_with_q_type(&path, 9, vec![0; 256 * 256 / 32 * 36]);
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("Q8_1"),
        "{err}"
    );
    // IQ2_XXS (id 16): unknown to candle, which refuses the whole file.
    let path = dir.path().join("iq2.gguf");
    gguf_with_q_type(&path, 16, vec![0; 256 * 256 / 256 * 66]);
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("IQ2_XXS") && err.contains("16"),
        "{err}"
    );
}

/// Names of the entries of `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn invalid_encoded_tensors_are_named_and_leave_nothing() {
    let dir = TempDir::new("gguf-w-err");
    let model = hf_model(&dir, &TINY, 6);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let path = out_dir.join("m.gguf");
    let (out, inp) = model.linear_shape(LinearKind::Q);
    let (data, _) = candle_encode(
        &model.linear_weight(0, LinearKind::Q).unwrap(),
        out,
        inp,
        GgmlDType::Q8_0,
    );
    let cases: Vec<(GgufLinears, &str)> = vec![
        (
            GgufLinears::from([(
                (0, LinearKind::Q),
                EncodedLinear {
                    dtype: GgmlDType::Q8_0,
                    data: data[..data.len() - 1].to_vec().into(),
                },
            )]),
            "blk.0.attn_q.weight",
        ),
        (
            GgufLinears::from([(
                (1, LinearKind::Up),
                EncodedLinear {
                    dtype: GgmlDType::Q4K,
                    data: vec![0; 144].into(),
                },
            )]),
            "blk.1.ffn_up.weight",
        ),
        (
            GgufLinears::from([(
                (7, LinearKind::V),
                EncodedLinear {
                    dtype: GgmlDType::Q8_0,
                    data: Vec::new().into(),
                },
            )]),
            "blk.7.attn_v.weight",
        ),
    ];
    for (linears, name) in cases {
        let err = write_gguf(&model, &path, &GgufOptions::default(), &linears).unwrap_err();
        assert!(matches!(err, LlamaIoError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(entries(&out_dir).is_empty(), "{:?}", entries(&out_dir));
    }
    // F16 beyond its range.
    let mut big = model.clone();
    let mut w = big.linear_weight(0, LinearKind::O).unwrap().to_vec();
    w[3] = 1e6;
    big.set_linear_weight(0, LinearKind::O, &w).unwrap();
    let options = GgufOptions {
        float: GgufFloat::F16,
        ..GgufOptions::default()
    };
    let err = write_gguf(&big, &path, &options, &GgufLinears::new()).unwrap_err();
    assert!(
        err.to_string().contains("blk.0.attn_output.weight"),
        "{err}"
    );
    assert!(entries(&out_dir).is_empty());
}

/// The tiny byte-level vocabulary of `tests/tokenizer.rs`: a control token, the 256
/// byte characters, one token per merge.
fn tiny_tokenizer_metadata() -> Vec<(&'static str, GValue)> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 0x100;
    let chars: Vec<char> = (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect();
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "2 0"];
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(chars.iter().map(|c| c.to_string()));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    tokens.extend((tokens.len()..TINY.vocab).map(|i| format!("[PAD{i}]")));
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    vec![
        ("tokenizer.ggml.model", GValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre", GValue::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens", GValue::Strs(tokens)),
        ("tokenizer.ggml.token_type", GValue::I32s(types)),
        (
            "tokenizer.ggml.merges",
            GValue::Strs(merges.iter().map(|m| m.to_string()).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", GValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", GValue::U32(0)),
        ("tokenizer.ggml.add_bos_token", GValue::Bool(false)),
        (
            "tokenizer.chat_template",
            GValue::Str("{{ messages }}".into()),
        ),
    ]
}

/// A TINY GGUF file with the tiny tokenizer, written by hand.
fn gguf_with_tokenizer(path: &Path) {
    let mut meta = gguf_metadata(&TINY);
    meta.extend(tiny_tokenizer_metadata());
    let tensors = common::gguf_tensors_f32(&TINY, &common::random_weights(&TINY, 7));
    std::fs::write(path, gguf_bytes(3, &meta, &tensors)).unwrap();
}

fn tokenizer_keys(content: &Content) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    keys.sort();
    keys
}

const TEXT: &str = "hello world, hello 2020 <|endoftext|> wow";

#[test]
fn gguf_tokenizer_keys_are_copied_as_they_were() {
    let dir = TempDir::new("gguf-w-tok");
    let input = dir.path().join("in.gguf");
    gguf_with_tokenizer(&input);
    let model = Model::load(&input).unwrap();
    assert!(matches!(
        model.tokenizer_source(),
        Some(TokenizerSource::Gguf(_))
    ));
    let out = dir.path().join("out.gguf");
    write_gguf(&model, &out, &GgufOptions::default(), &GgufLinears::new()).unwrap();
    assert_eq!(
        tokenizer_keys(&read_content(&out)),
        tokenizer_keys(&read_content(&input))
    );
    let back = Model::load(&out).unwrap();
    assert_eq!(back.encode(TEXT).unwrap(), model.encode(TEXT).unwrap());
    assert_eq!(model.encode("hello").unwrap(), vec![257 + 3]);
    assert_same_weights(&model, &back);
}

#[test]
fn hugging_face_tokenizer_is_converted_as_llama_cpp_does() {
    let dir = TempDir::new("gguf-w-hftok");
    let input = dir.path().join("in.gguf");
    gguf_with_tokenizer(&input);
    let gguf_model = Model::load(&input).unwrap();
    // The same tokenizer as a Hugging Face directory (tokenizer.json from the
    // tokenizers crate).
    let hf_dir = dir.path().join("hf");
    write_hf_dir(&gguf_model, &hf_dir, WeightDtype::F32, false).unwrap();
    let model = Model::load(&hf_dir).unwrap();
    assert!(matches!(
        model.tokenizer_source(),
        Some(TokenizerSource::HuggingFace { .. })
    ));

    // llama.cpp's rule does not know this tokenizer: a named error, nothing written.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.gguf");
    let err = write_gguf(&model, &out, &GgufOptions::default(), &GgufLinears::new()).unwrap_err();
    let hash = llama_cpp_chkhsh(model.tokenizer().unwrap()).unwrap();
    assert!(
        matches!(&err, LlamaIoError::Tokenizer(m) if m.contains(&hash) && m.contains("smollm")),
        "{err}"
    );
    assert!(entries(&out_dir).is_empty());

    // Named explicitly, it is written as the GGUF input had it.
    let options = GgufOptions {
        tokenizer_pre: Some("gpt-2".into()),
        ..GgufOptions::default()
    };
    write_gguf(&model, &out, &options, &GgufLinears::new()).unwrap();
    let written = read_content(&out);
    let original = read_content(&input);
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
    ] {
        assert_eq!(
            format!("{:?}", written.metadata[key]),
            format!("{:?}", original.metadata[key]),
            "{key}"
        );
    }
    // The Hugging Face directory carried the GGUF's BOS flag, special tokens and chat
    // template in its tokenizer_config.json, so they come back.
    for key in [
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ] {
        assert_eq!(
            format!("{:?}", written.metadata[key]),
            format!("{:?}", original.metadata[key]),
            "{key}"
        );
    }
    let back = Model::load(&out).unwrap();
    assert_eq!(back.encode(TEXT).unwrap(), model.encode(TEXT).unwrap());
    assert_eq!(
        back.encode(LLAMA_CPP_CHKTXT).unwrap(),
        model.encode(LLAMA_CPP_CHKTXT).unwrap()
    );
}

#[test]
fn other_tokenizer_types_are_named_errors() {
    let dir = TempDir::new("gguf-w-wl");
    let mut model = hf_model(&dir, &TINY, 8);
    let vocab: std::collections::HashMap<String, u32> =
        [("a".to_string(), 0), ("<unk>".to_string(), 1)].into();
    let wordlevel = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    model.set_tokenizer(Some(tokenizers::Tokenizer::new(wordlevel)));
    let path = dir.path().join("m.gguf");
    let err = write_gguf(&model, &path, &GgufOptions::default(), &GgufLinears::new()).unwrap_err();
    assert!(err.to_string().contains("WordLevel"), "{err}");
    assert!(!path.exists());
}

/// SmolLM2's tokenizer: llama.cpp's check hash names it `smollm`, and converted from
/// its JSON it gives the GGUF's own tokens and merges.
#[test]
#[ignore = "needs the SmolLM2 GGUF (cargo xtask fetch)"]
fn smollm2_tokenizer_is_recognised_as_llama_cpp_does() {
    let path = llama_io::data::default_model_path().unwrap();
    let model = Model::load(&path).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    assert_eq!(
        llama_cpp_chkhsh(tokenizer).unwrap(),
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    );
    let json = tokenizer.to_string(false).unwrap();
    let meta =
        llama_io::tokenizer::gguf_tokenizer_metadata(tokenizer, &json, None, model.config(), None)
            .unwrap();
    let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    assert_eq!(
        get("tokenizer.ggml.pre").unwrap().to_string().unwrap(),
        "smollm"
    );
    let Some(TokenizerSource::Gguf(original)) = model.tokenizer_source() else {
        panic!("a GGUF model keeps its tokenizer keys");
    };
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
    ] {
        let want = original.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let want: Vec<String> = want
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        let got: Vec<String> = get(key)
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        assert_eq!(got.len(), want.len(), "{key}");
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{key}: {diff} entries differ");
    }
    let _ = Value::Bool(true);
}

/// Writes SmolLM2 as an F32 GGUF whose block-0 `attn_q`, `attn_k` and `ffn_down` are
/// given as candle's Q8_0 encoding, to `$MAGR_GGUF_CHECK_OUT/smollm2-written.gguf`, for
/// `scripts/gguf_check.py` (an independent reader: the `gguf` Python package).
#[test]
#[ignore = "needs the SmolLM2 GGUF and MAGR_GGUF_CHECK_OUT; feeds scripts/gguf_check.py"]
fn smollm2_written_for_the_python_check() {
    let out_dir = std::env::var("MAGR_GGUF_CHECK_OUT").expect("MAGR_GGUF_CHECK_OUT");
    let model = Model::load(llama_io::data::default_model_path().unwrap()).unwrap();
    let mut linears = GgufLinears::new();
    for kind in [LinearKind::Q, LinearKind::K, LinearKind::Down] {
        let (out, inp) = model.linear_shape(kind);
        let (data, _) = candle_encode(
            &model.linear_weight(0, kind).unwrap(),
            out,
            inp,
            GgmlDType::Q8_0,
        );
        linears.insert(
            (0, kind),
            EncodedLinear {
                dtype: GgmlDType::Q8_0,
                data: data.into(),
            },
        );
    }
    let options = GgufOptions {
        float: GgufFloat::F32,
        ..GgufOptions::default()
    };
    let path = Path::new(&out_dir).join("smollm2-written.gguf");
    write_gguf(&model, &path, &options, &linears).unwrap();
    let back = Model::load(&path).unwrap();
    assert_eq!(back.encode(TEXT).unwrap(), model.encode(TEXT).unwrap());
}

/// A Hugging Face directory written from a GGUF input carries its tokenizer whole: the
/// special tokens by name, the chat template and the BOS flag in `tokenizer_config.json`,
/// `special_tokens_map.json`, `generation_config.json`; written again from that
/// directory, the three files come out the same.
#[test]
fn hf_directories_carry_the_gguf_tokenizer() {
    let dir = TempDir::new("gguf-w-hfcarry");
    let input = dir.path().join("in.gguf");
    gguf_with_tokenizer(&input);
    let model = Model::load(&input).unwrap();
    let first = dir.path().join("first");
    write_hf_dir(&model, &first, WeightDtype::F32, false).unwrap();
    let read = |d: &Path, f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap()
    };
    let tc = read(&first, "tokenizer_config.json");
    assert_eq!(tc["chat_template"], "{{ messages }}");
    assert_eq!(tc["bos_token"], "<|endoftext|>");
    assert_eq!(tc["eos_token"], "<|endoftext|>");
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["model_max_length"], 512);
    assert!(tc.get("unk_token").is_none() && tc.get("pad_token").is_none());
    assert_eq!(
        read(&first, "special_tokens_map.json"),
        serde_json::json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    );
    assert_eq!(
        read(&first, "generation_config.json"),
        serde_json::json!({"bos_token_id": 0, "eos_token_id": 0})
    );
    // The template's special token is one token in the written tokenizer.
    let back = Model::load(&first).unwrap();
    assert_eq!(back.encode("<|endoftext|>").unwrap(), vec![0]);

    let second = dir.path().join("second");
    write_hf_dir(&back, &second, WeightDtype::F32, false).unwrap();
    for file in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        assert_eq!(read(&first, file), read(&second, file), "{file}");
    }
}
