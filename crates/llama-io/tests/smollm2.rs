//! The real model: SmolLM2-135M-Instruct (GGUF, Q4_1 dequantized to f32) on the
//! WikiText-2 test split, seqlen 2048, first 10 windows (the papers' protocol on a quarter
//! of its 40 windows, to keep CI short).
//!
//! Ignored by default (it needs the fetched model and takes minutes); run with
//! `MAGR_MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf cargo test -p llama-io --release --test smollm2 -- --ignored --nocapture`.
//! It fails, never passes silently, when the model or the text is absent.

use faer::Par;
use llama_io::{Model, data, perplexity};

#[test]
#[ignore = "needs the SmolLM2 GGUF: run `cargo xtask fetch`"]
fn smollm2_wikitext2_perplexity_seqlen_2048_first_10_windows() {
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
        Some(10),
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
    assert_eq!(report.windows, 10);
    assert_eq!(report.tokens_scored, 10 * 2047);
    // PyTorch's perplexity of the same weights, tokens and windows (f32, 2 threads, by
    // `crates/llama-io/scripts/torch_reference.py MODEL wiki.test.raw 2048 10`, torch
    // 2.15.0): 20.2964 (and 20.8106 on 40 windows). The tolerance (5e-5 relative) leaves
    // room for f32 sums in another order (SIMD width, thread count).
    assert!(
        (report.ppl - 20.2964).abs() < 1e-3,
        "perplexity {} is not PyTorch's 20.2964",
        report.ppl
    );
}

/// SmolLM2-Instruct is a chat model: a Hugging Face directory written from its GGUF
/// carries the chat template and the special tokens of the GGUF's metadata, and the
/// template's control tokens stay single tokens.
#[test]
#[ignore = "needs the SmolLM2 GGUF: run `cargo xtask fetch`"]
fn smollm2_hf_directory_carries_the_chat_template_and_special_tokens() {
    let model = Model::load(data::default_model_path().unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("magr-smollm2-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    llama_io::write_hf_dir(&model, &dir, llama_io::WeightDtype::F16, false).unwrap();
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let tc = read("tokenizer_config.json");
    let template = tc["chat_template"].as_str().unwrap();
    assert!(
        template.starts_with("{% for message in messages %}") && template.contains("<|im_start|>"),
        "{template}"
    );
    assert_eq!(
        (
            &tc["bos_token"],
            &tc["eos_token"],
            &tc["unk_token"],
            &tc["pad_token"]
        ),
        (
            &serde_json::json!("<|im_start|>"),
            &serde_json::json!("<|im_end|>"),
            &serde_json::json!("<|endoftext|>"),
            &serde_json::json!("<|im_end|>")
        )
    );
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(
        read("generation_config.json"),
        serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
    );
    assert_eq!(read("special_tokens_map.json")["eos_token"], "<|im_end|>");
    let back = Model::load(&dir).unwrap();
    let ids = back.encode("<|im_start|>user\nHi<|im_end|>\n").unwrap();
    assert_eq!((ids[0], ids[ids.len() - 2]), (1, 2), "{ids:?}");
    assert_eq!(
        ids,
        model.encode("<|im_start|>user\nHi<|im_end|>\n").unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
