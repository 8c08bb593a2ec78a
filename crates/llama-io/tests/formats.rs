//! Readers: the same weights through safetensors (f32/f16/bf16, single file or
//! shards) and GGUF (F32, F16, BF16, Q8_0, Q4_0, Q4_1) load to the same model; the
//! Q/K permutation round-trips.

mod common;

use common::{
    GGML_BF16, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GTensor, Spec, TINY, TempDir, Tensors,
};
use half::{bf16, f16};
use llama_io::gguf::{permute_qk, unpermute_qk};
use llama_io::{LinearKind, Model};
use proptest::prelude::*;

/// Every tensor of `model` by Hugging Face name.
fn model_tensors(model: &Model) -> Tensors {
    model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, s, d)| (n, (s, d.to_vec())))
        .collect()
}

#[test]
fn safetensors_and_gguf_load_to_identical_weights() {
    for spec in [TINY, Spec { tied: true, ..TINY }] {
        let dir = TempDir::new("same");
        let weights = common::random_weights(&spec, 21);
        common::write_hf(&dir.path().join("hf"), &spec, &weights);
        let gguf = dir.path().join("tiny.gguf");
        common::write_gguf(&gguf, &spec, &weights);
        let a = Model::load(dir.path().join("hf")).unwrap();
        let b = Model::load(&gguf).unwrap();
        assert_eq!(a.config(), b.config());
        assert_eq!(
            model_tensors(&a),
            weights,
            "safetensors reader changed the weights"
        );
        assert_eq!(
            model_tensors(&b),
            weights,
            "GGUF reader (with un-permutation) changed the weights"
        );
        assert_eq!(
            a.lm_head(),
            if spec.tied {
                a.embedding()
            } else {
                &weights["lm_head.weight"].1[..]
            }
        );
    }
}

#[test]
fn half_precision_safetensors_are_widened_exactly() {
    let dir = TempDir::new("half");
    let weights = common::random_weights(&TINY, 22);
    for (dtype, round) in [
        (
            "F16",
            (|x: f32| f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        ("BF16", |x: f32| bf16::from_f32(x).to_f32()),
    ] {
        let list: Vec<_> = weights
            .iter()
            .map(|(n, (s, d))| {
                let bytes: Vec<u8> = if dtype == "F16" {
                    d.iter()
                        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                        .collect()
                } else {
                    d.iter()
                        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                        .collect()
                };
                (n.clone(), s.clone(), bytes, dtype)
            })
            .collect();
        let sub = dir.path().join(dtype);
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join("config.json"),
            common::config_json(&TINY).to_string(),
        )
        .unwrap();
        std::fs::write(
            sub.join("model.safetensors"),
            common::safetensors_bytes(&list),
        )
        .unwrap();
        let model = Model::load(&sub).unwrap();
        let expected: Tensors = weights
            .iter()
            .map(|(n, (s, d))| {
                (
                    n.clone(),
                    (s.clone(), d.iter().map(|&x| round(x)).collect()),
                )
            })
            .collect();
        assert_eq!(model_tensors(&model), expected, "{dtype}");
    }
}

#[test]
fn sharded_safetensors_with_index() {
    let dir = TempDir::new("shards");
    let weights = common::random_weights(&TINY, 23);
    std::fs::write(
        dir.path().join("config.json"),
        common::config_json(&TINY).to_string(),
    )
    .unwrap();
    let mut weight_map = serde_json::Map::new();
    let mut shards: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    for (i, (n, (s, d))) in weights.iter().enumerate() {
        let shard = i % 2;
        weight_map.insert(
            n.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1).into(),
        );
        shards[shard].push((n.clone(), s.clone(), common::f32_bytes(d), "F32"));
    }
    for (i, list) in shards.iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        std::fs::write(dir.path().join(name), common::safetensors_bytes(list)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(model_tensors(&model), weights);
}

/// Naive block encoders, written from the GGML block layouts: each returns the
/// bytes of one 32-value block and the f32 values a reader must produce.
mod blocks {
    use half::f16;

    /// Q8_0: f16 scale `d`, 32 signed bytes `q`; value `d * q`.
    pub fn q8_0(d: f32, q: &[i8; 32]) -> (Vec<u8>, Vec<f32>) {
        let d = f16::from_f32(d);
        let mut bytes = d.to_le_bytes().to_vec();
        bytes.extend(q.iter().map(|&v| v as u8));
        (
            bytes,
            q.iter().map(|&v| d.to_f32() * f32::from(v)).collect(),
        )
    }

    /// Q4_0: f16 scale `d`, 16 bytes; byte `j` holds value `j` (low nibble) and
    /// value `j + 16` (high nibble); value `d * (nibble - 8)`.
    pub fn q4_0(d: f32, q: &[u8; 32]) -> (Vec<u8>, Vec<f32>) {
        let d = f16::from_f32(d);
        let mut bytes = d.to_le_bytes().to_vec();
        bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        (
            bytes,
            q.iter()
                .map(|&v| d.to_f32() * (f32::from(v) - 8.0))
                .collect(),
        )
    }

    /// Q4_1: f16 scale `d` and minimum `m`, 16 bytes as Q4_0; value `d * nibble + m`.
    pub fn q4_1(d: f32, m: f32, q: &[u8; 32]) -> (Vec<u8>, Vec<f32>) {
        let (d, m) = (f16::from_f32(d), f16::from_f32(m));
        let mut bytes = d.to_le_bytes().to_vec();
        bytes.extend(m.to_le_bytes());
        bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        (
            bytes,
            q.iter()
                .map(|&v| d.to_f32() * f32::from(v) + m.to_f32())
                .collect(),
        )
    }
}

/// Encodes `n` values in blocks of 32 of type `ggml_type` from pseudo-random codes;
/// returns the bytes and the values a reader must produce.
fn encode(ggml_type: u32, n: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for _ in 0..n / 32 {
        let d = 0.001 + (next() % 1000) as f32 * 1e-5;
        let (b, v) = match ggml_type {
            GGML_Q8_0 => blocks::q8_0(d, &std::array::from_fn(|_| (next() % 255) as i8)),
            GGML_Q4_0 => blocks::q4_0(d, &std::array::from_fn(|_| (next() % 16) as u8)),
            GGML_Q4_1 => blocks::q4_1(
                d,
                -0.004 + (next() % 100) as f32 * 1e-4,
                &std::array::from_fn(|_| (next() % 16) as u8),
            ),
            GGML_F16 => {
                let x: Vec<f32> = (0..32)
                    .map(|_| f16::from_f32((next() % 2001) as f32 * 1e-4 - 0.1).to_f32())
                    .collect();
                (
                    x.iter()
                        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                        .collect(),
                    x,
                )
            }
            GGML_BF16 => {
                let x: Vec<f32> = (0..32)
                    .map(|_| bf16::from_f32((next() % 2001) as f32 * 1e-4 - 0.1).to_f32())
                    .collect();
                (
                    x.iter()
                        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                        .collect(),
                    x,
                )
            }
            _ => unreachable!(),
        };
        bytes.extend(b);
        values.extend(v);
    }
    (bytes, values)
}

#[test]
fn quantized_gguf_tensors_dequantize_to_the_block_formula() {
    // Each linear layer in a different storage type; the expected weights (in the
    // Hugging Face row order) are written as f32 safetensors.
    let types = [
        GGML_Q8_0, GGML_Q4_0, GGML_Q4_1, GGML_F16, GGML_BF16, GGML_Q8_0, GGML_Q4_1,
    ];
    let spec = TINY;
    let mut weights = common::random_weights(&spec, 24);
    let mut gguf = common::gguf_tensors_f32(&spec, &weights);
    for b in 0..spec.layers {
        for (i, kind) in LinearKind::ALL.into_iter().enumerate() {
            let ggml_type = types[(i + 3 * b) % types.len()];
            let (out, inp) = common::linear_shape(&spec, kind.hf_suffix());
            let (bytes, gguf_rows) = encode(ggml_type, out * inp, 100 * b as u32 + i as u32);
            // The values are the GGUF rows; the HF model holds them un-permuted.
            let hf_rows = match kind {
                LinearKind::Q => unpermute_rows(&gguf_rows, out, inp, spec.heads),
                LinearKind::K => unpermute_rows(&gguf_rows, out, inp, spec.kv_heads),
                _ => gguf_rows,
            };
            weights.get_mut(&kind.hf_name(b)).unwrap().1 = hf_rows;
            let slot = gguf
                .iter_mut()
                .find(|t| t.name == kind.gguf_name(b))
                .unwrap();
            *slot = GTensor {
                name: kind.gguf_name(b),
                shape: vec![out, inp],
                ggml_type,
                bytes,
            };
        }
    }
    let dir = TempDir::new("quant");
    let path = dir.path().join("q.gguf");
    std::fs::write(
        &path,
        common::gguf_bytes(3, &common::gguf_metadata(&spec), &gguf),
    )
    .unwrap();
    let model = Model::load(&path).unwrap();
    let got = model_tensors(&model);
    for (name, (shape, expected)) in &weights {
        let (s, v) = &got[name];
        assert_eq!(s, shape, "{name}");
        for (i, (a, e)) in v.iter().zip(expected).enumerate() {
            // d * q is exact in f32; d * q + m rounds once.
            assert!(
                (a - e).abs() <= 1e-6 * e.abs().max(1e-3),
                "{name}[{i}]: {a} vs {e}"
            );
        }
    }
}

/// HF row `s * hd/2 + j` = GGUF row `2j + s`, per head (the inverse of
/// `common::to_gguf_rows`, written out separately).
fn unpermute_rows(gguf: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut hf = vec![0.0; gguf.len()];
    for h in 0..heads {
        for r in 0..hd {
            let (s, j) = (r / (hd / 2), r % (hd / 2));
            let src = h * hd + 2 * j + s;
            let dst = h * hd + r;
            hf[dst * cols..(dst + 1) * cols].copy_from_slice(&gguf[src * cols..(src + 1) * cols]);
        }
    }
    hf
}

#[test]
fn smollm2_shape_permutation_matches_the_readme_rule() {
    // head_dim 64: HF row s*32 + j is GGUF row 2j + s. Rows hold their own index.
    let (heads, hd, cols) = (3, 64, 2);
    let hf: Vec<f32> = (0..heads * hd)
        .flat_map(|r| [r as f32, -(r as f32)])
        .collect();
    let gguf = permute_qk(&hf, heads * hd, cols, heads).unwrap();
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..32 {
                assert_eq!(
                    gguf[(h * hd + 2 * j + s) * cols],
                    (h * hd + s * 32 + j) as f32
                );
            }
        }
    }
    assert!(
        permute_qk(&hf, heads * hd, cols, 5).is_err(),
        "rows not divisible by heads"
    );
    assert!(
        permute_qk(&hf[1..], heads * hd, cols, heads).is_err(),
        "wrong length"
    );
    assert!(unpermute_qk(&hf, 6, 2, 2).is_err(), "odd head dim");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn qk_permutation_round_trips(heads in 1usize..6, half_dim in 1usize..9, cols in 1usize..5, seed in 0u64..1000) {
        let rows = heads * half_dim * 2;
        let data: Vec<f32> = (0..rows * cols).map(|i| ((i as u64 * 31 + seed) % 1009) as f32).collect();
        let there = permute_qk(&data, rows, cols, heads).unwrap();
        prop_assert_eq!(&unpermute_qk(&there, rows, cols, heads).unwrap(), &data);
        prop_assert_eq!(&permute_qk(&unpermute_qk(&data, rows, cols, heads).unwrap(), rows, cols, heads).unwrap(), &data);
        prop_assert_eq!(&unpermute_qk(&data, rows, cols, heads).unwrap(), &unpermute_rows(&data, rows, cols, heads));
        prop_assert_eq!(&there, &common::to_gguf_rows(&data, rows, cols, heads));
    }
}
