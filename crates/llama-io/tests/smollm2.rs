//! The real model: SmolLM2-135M-Instruct (GGUF, Q4_1 dequantized to f32) on the
//! WikiText-2 test split, seqlen 2048, first 40 windows (the papers' protocol).
//!
//! Ignored by default (it needs the fetched model and takes minutes); run with
//! `MAGR_MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf cargo test -p llama-io --release --test smollm2 -- --ignored --nocapture`.
//! It fails, never passes silently, when the model or the text is absent.

use faer::Par;
use llama_io::{Model, data, perplexity};

#[test]
#[ignore = "needs the SmolLM2 GGUF: run `cargo xtask fetch`"]
fn smollm2_wikitext2_perplexity_seqlen_2048_first_40_windows() {
    let model = Model::load(data::default_model_path().unwrap()).unwrap();
    let c = model.config();
    // The data README's facts about this file.
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 576, 1536, 9, 3)
    );
    assert_eq!(
        (c.vocab_size, c.rope_theta, c.tie_word_embeddings),
        (49152, 100_000.0, true)
    );

    let tokens = model.encode(&data::read_wikitext2_test().unwrap()).unwrap();
    let report = perplexity(
        &model,
        &tokens,
        2048,
        Some(40),
        Par::rayon(0),
        &mut |done, total| {
            eprintln!("window {done}/{total}");
        },
    )
    .unwrap();
    println!(
        "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32), WikiText-2 test, {} tokens: \
         ppl {:.4} over {} windows of 2048 ({} tokens scored), {:.1} s, {:.1} tokens/s",
        tokens.len(),
        report.ppl,
        report.windows,
        report.tokens_scored,
        report.seconds,
        report.tokens_per_second
    );
    assert_eq!(report.windows, 40);
    assert_eq!(report.tokens_scored, 40 * 2047);
    // A working model: far below the vocabulary size (49152), above a perfect 1.
    assert!(
        report.ppl > 5.0 && report.ppl < 60.0,
        "implausible perplexity {}",
        report.ppl
    );
}
