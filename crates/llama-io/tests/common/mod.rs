//! Test support: tiny random Llama models written by hand as Hugging Face
//! directories and GGUF files (independently of the crate's own writer), and a
//! naive f64 forward pass that follows the Llama equations loop by loop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Architecture of a test model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
    pub theta: f64,
    pub eps: f64,
}

impl Spec {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// The tiny model: 2 layers, hidden 64, 4 heads with 2 KV heads, vocab 300.
pub const TINY: Spec = Spec {
    hidden: 64,
    intermediate: 96,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 300,
    tied: false,
    theta: 10_000.0,
    eps: 1e-5,
};

/// Hugging Face tensors: name -> (shape, row-major f32 values).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub const LINEARS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

pub fn linear_shape(spec: &Spec, proj: &str) -> (usize, usize) {
    let (d, f, kv) = (
        spec.hidden,
        spec.intermediate,
        spec.kv_heads * spec.head_dim(),
    );
    match proj {
        "q_proj" => (d, d),
        "k_proj" | "v_proj" => (kv, d),
        "o_proj" => (d, d),
        "gate_proj" | "up_proj" => (f, d),
        "down_proj" => (d, f),
        _ => unreachable!(),
    }
}

/// Random weights: linears uniform in `+-1/sqrt(in)`, norm gains in `[0.8, 1.2]`,
/// embedding uniform in `+-1`.
pub fn random_weights(spec: &Spec, seed: u64) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut uniform = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    };
    let (d, v) = (spec.hidden, spec.vocab);
    let mut t = Tensors::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        (vec![v, d], uniform(v * d, -1.0, 1.0)),
    );
    for b in 0..spec.layers {
        t.insert(
            format!("model.layers.{b}.input_layernorm.weight"),
            (vec![d], uniform(d, 0.8, 1.2)),
        );
        t.insert(
            format!("model.layers.{b}.post_attention_layernorm.weight"),
            (vec![d], uniform(d, 0.8, 1.2)),
        );
        for (module, proj) in LINEARS {
            let (o, i) = linear_shape(spec, proj);
            let s = 1.0 / (i as f32).sqrt();
            t.insert(
                format!("model.layers.{b}.{module}.{proj}.weight"),
                (vec![o, i], uniform(o * i, -s, s)),
            );
        }
    }
    t.insert("model.norm.weight".into(), (vec![d], uniform(d, 0.8, 1.2)));
    if !spec.tied {
        t.insert(
            "lm_head.weight".into(),
            (vec![v, d], uniform(v * d, -0.5, 0.5)),
        );
    }
    t
}

pub fn config_json(spec: &Spec) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": spec.vocab,
        "rope_theta": spec.theta,
        "rms_norm_eps": spec.eps,
        "tie_word_embeddings": spec.tied,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "torch_dtype": "float32",
    })
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("llama-io-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serializes f32 tensors (stored as `dtype`: "F32", "F16" or "BF16") as a
/// safetensors file, byte by byte per the format: u64 header length, JSON header
/// with `data_offsets`, then the data.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<u8>, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, bytes, dtype) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `tensors` as a Hugging Face directory with f32 safetensors.
pub fn write_hf(dir: &Path, spec: &Spec, tensors: &Tensors) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json(spec).to_string()).unwrap();
    let list: Vec<_> = tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), f32_bytes(d), "F32"))
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&list)).unwrap();
}

// ---------------------------------------------------------------------------
// GGUF, written by hand from the specification.

pub enum GValue {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

pub struct GTensor {
    pub name: String,
    /// Outermost first (PyTorch order); written innermost first.
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub bytes: Vec<u8>,
}

pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q4_1: u32 = 3;
pub const GGML_Q5_0: u32 = 6;
pub const GGML_Q8_0: u32 = 8;
pub const GGML_BF16: u32 = 30;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn gguf_bytes(version: u32, kvs: &[(&str, GValue)], tensors: &[GTensor]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        match value {
            GValue::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            GValue::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            GValue::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(*v as u8);
            }
            GValue::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            GValue::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            GValue::Strs(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut out, s);
                }
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.bytes.len().div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for t in tensors {
        out.extend_from_slice(&t.bytes);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
    }
    out
}

/// GGUF row order of a Q/K weight: GGUF row `2j + s` of each head holds HF row
/// `s * head_dim/2 + j` (the data README's rule, written out directly).
pub fn to_gguf_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let src = h * hd + s * (hd / 2) + j;
                let dst = h * hd + 2 * j + s;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

pub fn gguf_metadata(spec: &Spec) -> Vec<(&'static str, GValue)> {
    vec![
        ("general.architecture", GValue::Str("llama".into())),
        ("llama.block_count", GValue::U32(spec.layers as u32)),
        ("llama.embedding_length", GValue::U32(spec.hidden as u32)),
        (
            "llama.feed_forward_length",
            GValue::U32(spec.intermediate as u32),
        ),
        ("llama.attention.head_count", GValue::U32(spec.heads as u32)),
        (
            "llama.attention.head_count_kv",
            GValue::U32(spec.kv_heads as u32),
        ),
        ("llama.rope.freq_base", GValue::F32(spec.theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GValue::F32(spec.eps as f32),
        ),
        ("llama.vocab_size", GValue::U32(spec.vocab as u32)),
        ("llama.context_length", GValue::U32(512)),
    ]
}

/// GGUF name of an HF tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (block, part) = rest.split_once('.').unwrap();
    let part = match part {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{block}.{part}.weight")
}

/// The GGUF tensors of HF tensors, all stored as F32, with Q/K rows permuted.
pub fn gguf_tensors_f32(spec: &Spec, tensors: &Tensors) -> Vec<GTensor> {
    tensors
        .iter()
        .map(|(name, (shape, data))| {
            let data = if name.ends_with("q_proj.weight") {
                to_gguf_rows(data, shape[0], shape[1], spec.heads)
            } else if name.ends_with("k_proj.weight") {
                to_gguf_rows(data, shape[0], shape[1], spec.kv_heads)
            } else {
                data.clone()
            };
            GTensor {
                name: gguf_name(name),
                shape: shape.clone(),
                ggml_type: GGML_F32,
                bytes: f32_bytes(&data),
            }
        })
        .collect()
}

pub fn write_gguf(path: &Path, spec: &Spec, tensors: &Tensors) {
    std::fs::write(
        path,
        gguf_bytes(3, &gguf_metadata(spec), &gguf_tensors_f32(spec, tensors)),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------
// Naive f64 reference forward pass.

/// What the reference produces for one sequence.
pub struct Reference {
    /// `[position][vocab]`.
    pub logits: Vec<Vec<f64>>,
    /// Per block, the four linear inputs (attention, attention output, MLP, MLP
    /// hidden), each `[position][width]`.
    pub inputs: Vec<[Vec<Vec<f64>>; 4]>,
    /// Per block, the hidden state after it, `[position][hidden]`.
    pub hidden: Vec<Vec<Vec<f64>>>,
}

fn get<'a>(t: &'a Tensors, name: &str) -> &'a [f32] {
    &t.get(name).unwrap_or_else(|| panic!("missing {name}")).1
}

/// `y = W x` for `W` (`out x in`, row-major).
fn matvec(w: &[f32], x: &[f64]) -> Vec<f64> {
    let n = x.len();
    w.chunks_exact(n)
        .map(|row| row.iter().zip(x).map(|(&a, &b)| f64::from(a) * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], g: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(g)
        .map(|(v, &g)| v * r * f64::from(g))
        .collect()
}

/// Rotates pairs `(i, i + hd/2)` of each head by `pos * theta^(-2i/hd)`.
fn rope(x: &mut [f64], heads: usize, hd: usize, pos: usize, theta: f64) {
    for h in 0..heads {
        for i in 0..hd / 2 {
            let angle = pos as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
            let (c, s) = (angle.cos(), angle.sin());
            let (a, b) = (x[h * hd + i], x[h * hd + i + hd / 2]);
            x[h * hd + i] = a * c - b * s;
            x[h * hd + i + hd / 2] = a * s + b * c;
        }
    }
}

pub fn reference_forward(spec: &Spec, t: &Tensors, tokens: &[u32]) -> Reference {
    let (d, hd) = (spec.hidden, spec.head_dim());
    let group = spec.heads / spec.kv_heads;
    let emb = get(t, "model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| {
            emb[tok as usize * d..(tok as usize + 1) * d]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        })
        .collect();
    let mut inputs = Vec::new();
    let mut hidden = Vec::new();
    for b in 0..spec.layers {
        let w = |name: &str| get(t, &format!("model.layers.{b}.{name}.weight"));
        let a: Vec<Vec<f64>> = x
            .iter()
            .map(|xi| rms_norm(xi, w("input_layernorm"), spec.eps))
            .collect();
        let mut q: Vec<Vec<f64>> = a
            .iter()
            .map(|ai| matvec(w("self_attn.q_proj"), ai))
            .collect();
        let mut k: Vec<Vec<f64>> = a
            .iter()
            .map(|ai| matvec(w("self_attn.k_proj"), ai))
            .collect();
        let v: Vec<Vec<f64>> = a
            .iter()
            .map(|ai| matvec(w("self_attn.v_proj"), ai))
            .collect();
        for (p, (qp, kp)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            rope(qp, spec.heads, hd, p, spec.theta);
            rope(kp, spec.kv_heads, hd, p, spec.theta);
        }
        let mut attn = vec![vec![0.0; spec.heads * hd]; tokens.len()];
        for (p, out) in attn.iter_mut().enumerate() {
            for h in 0..spec.heads {
                let kvh = h / group;
                let qh = &q[p][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=p)
                    .map(|s| {
                        let ks = &k[s][kvh * hd..(kvh + 1) * hd];
                        qh.iter().zip(ks).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (s, es) in e.iter().enumerate() {
                    for i in 0..hd {
                        out[h * hd + i] += es / z * v[s][kvh * hd + i];
                    }
                }
            }
        }
        for (xi, ai) in x.iter_mut().zip(&attn) {
            let o = matvec(w("self_attn.o_proj"), ai);
            xi.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        let m: Vec<Vec<f64>> = x
            .iter()
            .map(|xi| rms_norm(xi, w("post_attention_layernorm"), spec.eps))
            .collect();
        let act: Vec<Vec<f64>> = m
            .iter()
            .map(|mi| {
                let g = matvec(w("mlp.gate_proj"), mi);
                let u = matvec(w("mlp.up_proj"), mi);
                g.iter()
                    .zip(u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect()
            })
            .collect();
        for (xi, ai) in x.iter_mut().zip(&act) {
            let dn = matvec(w("mlp.down_proj"), ai);
            xi.iter_mut().zip(dn).for_each(|(a, b)| *a += b);
        }
        inputs.push([a, attn, m, act]);
        hidden.push(x.clone());
    }
    let head = if spec.tied {
        get(t, "model.embed_tokens.weight")
    } else {
        get(t, "lm_head.weight")
    };
    let logits = x
        .iter()
        .map(|xi| matvec(head, &rms_norm(xi, get(t, "model.norm.weight"), spec.eps)))
        .collect();
    Reference {
        logits,
        inputs,
        hidden,
    }
}

/// `max |a - b| / max(max |b|, tiny)` over matching rows.
pub fn max_rel_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let scale = b
        .iter()
        .flatten()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Rows of a `[rows, cols]` (or `[1, rows, cols]`) tensor as f64.
pub fn rows_f64(t: &candle_core::Tensor) -> Vec<Vec<f64>> {
    let dims = t.dims().to_vec();
    let cols = *dims.last().unwrap();
    let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    flat.chunks_exact(cols)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

/// `n` token ids below `vocab`, spread by `seed`.
pub fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 7919 + seed * 104_729 + 13) % vocab as u64) as u32)
        .collect()
}

/// A tiny model of `spec` with random weights (`seed`), written as a Hugging Face
/// directory and loaded: the directory, the weights and the model.
pub fn load_hf(spec: &Spec, seed: u64) -> (TempDir, Tensors, llama_io::Model) {
    let dir = TempDir::new("hf-model");
    let weights = random_weights(spec, seed);
    write_hf(dir.path(), spec, &weights);
    let model = llama_io::Model::load(dir.path()).unwrap();
    (dir, weights, model)
}
