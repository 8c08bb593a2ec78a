//! llama.cpp as the judge of magr's GGUF files (needs the SmolLM2 GGUF and llama.cpp's
//! tools: `cargo xtask ci` fetches and builds both and runs these `#[ignore]`d tests).
//!
//! For each legacy block format, SmolLM2 is quantized onto the format's grid and written
//! both as a GGUF file and as the fake-quant directory (f32). Then:
//! - candle's GGUF reader (an implementation independent of magr's packer) dequantizes
//!   every block of the file to exactly the fake-quant weights, bit for bit;
//! - llama.cpp's `llama-perplexity` on the GGUF file agrees with `magr eval` on the
//!   fake-quant directory, both scoring the second half of each 128-token window
//!   (llama.cpp's protocol), within `PPL_TOLERANCE`: llama.cpp multiplies block-quantized
//!   weights by activations it rounds to 8 bits (Q8_0/Q8_1), magr by f32 activations, so
//!   the two differ by that rounding only. Measured: 0.73% on a file that is the float
//!   model itself (SmolLM2's weights lie on Q4_1 grids, so q4_1 RTN is lossless), up to
//!   1.07% (q8_0); a misplaced row or block gives perplexities in the hundreds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use magr::llama_io::tokenizer::tokenizer_from_json;
use magr::llama_io::{
    GgufFloat, GgufLinears, GgufOptions, HostTensor, LinearKind, Model, WeightDtype, data,
    write_gguf, write_hf_dir,
};
use magr::quantizers::{GridFit, GridSpec};
use magr::{
    FormatContext, GgufFormat, GgufPreset, Identity, PipelineSettings, RtnMethod, quantize_model,
};

#[path = "../../../tests/common/mod.rs"]
mod common;

/// Relative difference allowed between llama.cpp's perplexity and magr's.
const PPL_TOLERANCE: f64 = 0.02;
/// The same for the generated model of the K-quant test, whose near-uniform predictions
/// leave little room: measured 0.0005% to 0.06%, where its Q2_K file and the float model
/// differ by 5% (325.5 vs 309.8).
const GENERATED_PPL_TOLERANCE: f64 = 0.005;
/// Windows of `WINDOW` tokens scored by both.
const CHUNKS: &str = "8";
const WINDOW: &str = "128";

fn llama_cpp_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("MAGR_LLAMA_CPP_BIN").expect(
        "MAGR_LLAMA_CPP_BIN: the directory of llama.cpp's tools (`cargo xtask llama-cpp` prints it)",
    ))
}

fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed: {text}",
        program.display()
    );
    text
}

/// llama.cpp's perplexity of the GGUF file `gguf` and magr's of the Hugging Face
/// directory `fake` (llama.cpp's protocol), on the first `CHUNKS` windows of `WINDOW`
/// tokens of `text`.
fn both_perplexities(bin: &Path, gguf: &Path, fake: &Path, text: &Path) -> (f64, f64) {
    // (`cargo xtask llama-cpp` patches llama-perplexity to flush its log before it
    // exits, or a tiny model's final line can be lost.)
    let llama = run(
        &bin.join("llama-perplexity"),
        &[
            "-m",
            s(gguf),
            "-f",
            s(text),
            "-c",
            WINDOW,
            "--chunks",
            CHUNKS,
            "-t",
            "2",
        ],
    );
    let eval = run(
        Path::new(env!("CARGO_BIN_EXE_magr")),
        &[
            "eval",
            "--quiet",
            "--model",
            s(fake),
            "--eval-text",
            s(text),
            "--eval-seqlen",
            WINDOW,
            "--eval-windows",
            CHUNKS,
            "--llama-cpp-protocol",
        ],
    );
    (
        ppl_after(&llama, "Final estimate: PPL ="),
        ppl_after(&eval, "ppl"),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The perplexity after `marker` in `text` (`ppl 52.0428` / `PPL = 52.0428`).
fn ppl_after(text: &str, marker: &str) -> f64 {
    let rest = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in {text}"))
        + marker.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs the SmolLM2 GGUF and llama.cpp's tools (cargo xtask ci)"]
fn llama_cpp_reads_magr_gguf_files_as_magr_does() {
    let magr = Path::new(env!("CARGO_BIN_EXE_magr"));
    let bin = llama_cpp_bin();
    let model = data::default_model_path().unwrap();
    let dir = std::env::temp_dir().join(format!("magr-llama-cpp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The start of WikiText-2 test, lines joined by a blank line (the papers' text).
    let wiki = data::read_text(&data::data_file(data::WIKITEXT2_TEST).unwrap()).unwrap();
    let lines: Vec<&str> = wiki.lines().take(300).collect();
    let text = dir.join("wiki.txt");
    std::fs::write(&text, data::join_lines(&lines.join("\n"))).unwrap();

    // (type, extra flags): MagR+OPTQ with the weighted fit on one legacy format and OPTQ
    // with it on one preset; plain RTN or OPTQ with the min-max fit on the others (the
    // file layout is what is judged here, not the quantizer, and the weighted search is
    // most of a run's time); two K-quant presets (SmolLM2's ffn_down is the one width
    // that holds K-quants: Q3_K under q2_k, Q4_K and Q6_K under q4_k_m; the rest falls
    // back to legacy types).
    const MIN_MAX_RTN: &[&str] = &["--method", "rtn", "--no-magr", "--grid-fit", "min-max"];
    let cases: [(&str, &[&str]); 7] = [
        ("q2_k", MIN_MAX_RTN),
        (
            "Q4_K_M",
            &["--method", "optq", "--no-magr", "--grid-fit", "weighted"],
        ),
        ("q4_0", &["--magr-iters", "3", "--grid-fit", "weighted"]),
        ("q4_1", MIN_MAX_RTN),
        ("q5_0", MIN_MAX_RTN),
        (
            "q5_1",
            &["--method", "optq", "--no-magr", "--grid-fit", "min-max"],
        ),
        ("q8_0", MIN_MAX_RTN),
    ];
    for (ty, extra) in cases {
        let out = dir.join(ty);
        let mut args = vec![
            "quantize",
            "--quiet",
            "--model",
            s(&model),
            "--gguf-type",
            ty,
            "--formats",
            "fake-quant,gguf",
            "--dtype",
            "f32",
            "--nsamples",
            "2",
            "--seqlen",
            "128",
            "--eval-windows",
            "0",
            "--out",
            s(&out),
        ];
        args.extend(extra);
        run(magr, &args);
        let gguf = out.join("gguf/model.gguf");
        let fake = out.join("fake-quant");

        // Every block, dequantized by candle, is the fake-quant weight, bit for bit.
        let from_gguf = Model::load(&gguf).unwrap();
        let from_fake = Model::load(&fake).unwrap();
        for block in 0..from_fake.num_blocks() {
            for kind in LinearKind::ALL {
                let a = from_gguf.linear_weight(block, kind).unwrap();
                let b = from_fake.linear_weight(block, kind).unwrap();
                assert!(
                    a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{ty}: {} differs",
                    kind.hf_name(block)
                );
            }
        }

        // llama.cpp's perplexity of the file is magr's of the fake-quant weights.
        let (theirs, ours) = both_perplexities(&bin, &gguf, &fake, &text);
        eprintln!("{ty}: llama.cpp ppl {theirs:.4}, magr ppl {ours:.4}");
        assert!(
            (theirs - ours).abs() <= PPL_TOLERANCE * ours,
            "{ty}: llama.cpp {theirs} vs magr {ours}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `ggml_type` id of every tensor of a GGUF file, by name (candle's header parse).
fn tensor_types(path: &Path) -> BTreeMap<String, u32> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let id = magr::llama_io::gguf::ggml_type_id(info.ggml_dtype);
            (name.clone(), id)
        })
        .collect()
}

/// `llama-quantize` itself is the judge of the presets' per-layer types: for generated
/// models of three shapes (every width a multiple of 256, 8 blocks; 320-wide layers that
/// fall back, 16 blocks and four query heads per KV head; and 80 blocks with grouped
/// heads, llama.cpp's 70B rule), the type llama.cpp gives each linear layer under each
/// preset is the one magr quantizes it on.
#[test]
#[ignore = "needs llama.cpp's tools (cargo xtask ci)"]
fn llama_quantize_chooses_the_layer_types_magr_does() {
    let bin = llama_cpp_bin();
    let dir = std::env::temp_dir().join(format!("magr-llama-types-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shapes = [(256, 512, 8, 2), (320, 512, 16, 1), (64, 256, 80, 2)];
    for (n, (hidden, intermediate, blocks, kv_heads)) in shapes.into_iter().enumerate() {
        let model = common::generated_model(hidden, intermediate, blocks, kv_heads, n as u64);
        let input = dir.join(format!("model-{n}.gguf"));
        let options = GgufOptions {
            float: GgufFloat::F32,
            ..GgufOptions::default()
        };
        write_gguf(&model, &input, &options, &GgufLinears::new()).unwrap();
        for preset in GgufPreset::ALL {
            let output = dir.join(format!("model-{n}-{preset}.gguf"));
            let upper = preset.name().to_uppercase();
            run(
                &bin.join("llama-quantize"),
                &[s(&input), s(&output), &upper, "2"],
            );
            let types = tensor_types(&output);
            for block in 0..blocks {
                for kind in LinearKind::ALL {
                    let name = kind.gguf_name(block);
                    let ours = preset.layer_type(model.config(), block, kind).unwrap();
                    assert_eq!(
                        types[&name],
                        ours.type_id(),
                        "{preset}, model {n} ({hidden} x {intermediate}, {blocks} blocks): \
                         {name} is type {} in llama.cpp's file, {ours} in magr's",
                        types[&name]
                    );
                }
            }
            std::fs::remove_file(&output).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// llama.cpp reads every K-quant as magr does. SmolLM2's only K-capable layer is
/// `ffn_down` (never Q2_K), so a generated model whose widths are multiples of 256, with
/// a byte-level BPE tokenizer, is quantized (RTN, weighted fit) under three presets that
/// together store Q2_K, Q3_K, Q4_K, Q5_K and Q6_K; `llama-perplexity` on each file agrees
/// with `magr eval` on the fake-quant weights within `GENERATED_PPL_TOLERANCE`.
#[test]
#[ignore = "needs llama.cpp's tools (cargo xtask ci)"]
fn llama_cpp_reads_every_k_quant_of_a_generated_model() {
    let bin = llama_cpp_bin();
    let dir = std::env::temp_dir().join(format!("magr-llama-k-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, common::bpe_tokenizer_json()).unwrap();
    let tokenizer = tokenizer_from_json(&json).unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, common::word_text(3000, 1)).unwrap();
    let windows = common::windows(4, 64, 2);

    // The generated embedding (rows of norm ~16, tied to the head) gives logits in the
    // hundreds and perplexities beyond 1e50; scaled by 0.02 the logits are a few units.
    let generated = common::k_quant_model(8, 11);
    let tensors: std::collections::HashMap<String, HostTensor> = generated
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, shape, data)| {
            let scale = if name == "model.embed_tokens.weight" {
                0.02
            } else {
                1.0
            };
            let data = data.iter().map(|v| v * scale).collect();
            (name, HostTensor { shape, data })
        })
        .collect();
    let base = Model::from_hf_tensors(
        generated.config().clone(),
        tensors,
        Some(tokenizer),
        Path::new("generated"),
    )
    .unwrap();

    let mut stored = std::collections::HashSet::new();
    for preset in [GgufPreset::Q2_K, GgufPreset::Q4_K_S, GgufPreset::Q5_K_M] {
        let mut model = base.clone();
        let spec = GridSpec::ggml(preset.default_type(), GridFit::Weighted);
        let settings = PipelineSettings {
            gguf_preset: Some(preset),
            method: std::sync::Arc::new(RtnMethod),
            preprocessor: std::sync::Arc::new(Identity),
            ..PipelineSettings::new(spec, faer::Par::rayon(2))
        };
        let mut format = GgufFormat::new(&FormatContext {
            spec,
            gguf_preset: Some(preset),
            act_order: false,
            damping: None,
            dtype: WeightDtype::F32,
            gguf_float: GgufFloat::F32,
        })
        .unwrap();
        quantize_model(
            &mut model,
            &windows,
            &settings,
            &mut common::Feed::new(&mut format),
        )
        .unwrap();
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                stored.insert(format.layer_type(block, kind).unwrap());
            }
        }
        // The tokenizer's hash is unknown to llama.cpp: GPT-2's pre-tokenizer, by name.
        let gguf = dir.join(format!("{preset}.gguf"));
        let options = GgufOptions {
            float: GgufFloat::F32,
            tokenizer_pre: Some("gpt-2".into()),
            ..GgufOptions::default()
        };
        write_gguf(&model, &gguf, &options, format.encoded()).unwrap();
        let fake = dir.join(format!("{preset}-fake"));
        write_hf_dir(&model, &fake, WeightDtype::F32, false).unwrap();

        let (theirs, ours) = both_perplexities(&bin, &gguf, &fake, &text);
        eprintln!("generated model, {preset}: llama.cpp ppl {theirs:.4}, magr ppl {ours:.4}");
        assert!(
            (theirs - ours).abs() <= GENERATED_PPL_TOLERANCE * ours,
            "{preset}: llama.cpp {theirs} vs magr {ours}"
        );
    }
    for ty in magr::quantizers::GgmlBlockType::K_QUANTS {
        assert!(stored.contains(&ty), "{ty} was never stored: {stored:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
