//! Forward-pass throughput on SmolLM2-135M shapes (hidden 576, 9 query / 3 KV heads
//! of 64, SwiGLU 1536, vocab 49152) with random weights: one decoder block, the
//! same block while accumulating `X^T X` for its linear inputs, and one window of
//! perplexity through a one-block model (embedding, block, norm, 49152-wide head and
//! cross-entropy). Throughput is in tokens.
//!
//! `cargo bench -p llama-io --bench forward -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::Par;
use llama_io::{HostTensor, LlamaConfig, Model, TensorRole, XtxAccumulator, perplexity};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn smollm2_shaped(layers: usize) -> Model {
    let config = LlamaConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: layers,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        rope_theta: 100_000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        max_position_embeddings: 8192,
        bos_token_id: None,
        eos_token_id: None,
    };
    let mut rng = StdRng::seed_from_u64(0);
    let tensors: HashMap<String, HostTensor> = TensorRole::all(&config)
        .into_iter()
        .map(|role| {
            let shape = role.shape(&config);
            let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
            let data = (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-scale..scale))
                .collect();
            (role.hf_name(), HostTensor { shape, data })
        })
        .collect();
    Model::from_hf_tensors(config, tensors, None, Path::new("random")).expect("valid random model")
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 49152)
        .collect()
}

fn bench_block(c: &mut Criterion) {
    let model = smollm2_shaped(1);
    let mut group = c.benchmark_group("smollm2_block");
    group.sample_size(10);
    for seq in [512usize, 2048] {
        let hidden = model.embed(&[tokens(seq)]).expect("embed");
        group.throughput(Throughput::Elements(seq as u64));
        group.bench_function(format!("run_block/seq{seq}"), |b| {
            b.iter(|| {
                model
                    .run_block(0, black_box(&hidden), Par::rayon(0))
                    .expect("block")
            })
        });
    }
    let hidden = model.embed(&[tokens(2048)]).expect("embed");
    group.bench_function("run_block_capturing_xtx/seq2048", |b| {
        b.iter(|| {
            let mut acc = XtxAccumulator::new(model.config(), Par::rayon(0));
            model
                .run_block_capturing(0, black_box(&hidden), Par::rayon(0), &mut acc)
                .expect("block");
            acc
        })
    });
    group.finish();
}

fn bench_perplexity_window(c: &mut Criterion) {
    let model = smollm2_shaped(1);
    let text = tokens(2048);
    let mut group = c.benchmark_group("smollm2_perplexity");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2048));
    group.bench_function("one_block_model/window2048", |b| {
        b.iter(|| {
            perplexity(
                &model,
                black_box(&text),
                2048,
                Some(1),
                Par::rayon(0),
                &mut |_, _| {},
            )
            .expect("ppl")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_block, bench_perplexity_window);
criterion_main!(benches);
