//! The `magr` binary's refusals: each bad flag or path is a one-line error naming it,
//! given before any model is loaded, and nothing is written.

use std::process::Command;

fn magr(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_magr"))
        .args(args)
        .env("MAGR_MODEL", "/nonexistent/model.gguf")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_named_errors() {
    let (ok, err) = magr(&["quantize", "--bits", "5"]);
    assert!(!ok && err.contains("unsupported bit width 5"), "{err}");
    let (ok, err) = magr(&["quantize", "--group-size", "0"]);
    assert!(!ok && err.contains("group"), "{err}");
    let (ok, err) = magr(&["quantize", "--method", "sgd"]);
    assert!(!ok && err.contains("sgd"), "{err}");
    for bad in ["1.5", "0", "often"] {
        let (ok, err) = magr(&["quantize", &format!("--beta={bad}")]);
        assert!(
            !ok && err.contains("--beta") && err.contains("`auto`"),
            "{err}"
        );
    }
    let (ok, err) = magr(&["quantize", "--beta", "auto", "--gguf-type", "q4_0"]);
    assert!(
        !ok && err.contains("--beta") && err.contains("--gguf-type"),
        "{err}"
    );
    for bad in ["-1", "nan", "often"] {
        let (ok, err) = magr(&["quantize", &format!("--alpha={bad}")]);
        assert!(
            !ok && err.contains("--alpha") && err.contains("`auto`"),
            "{err}"
        );
    }
    let (ok, err) = magr(&["quantize", "--hidden-store", "disk"]);
    assert!(
        !ok && err.contains("--hidden-store disk needs --out"),
        "{err}"
    );
    let (ok, err) = magr(&["quantize", "--device", "gpu"]);
    assert!(!ok && err.contains("cuda:N"), "{err}");
    // The tests build without the `cuda` feature: a GPU is refused before any work.
    for command in ["quantize", "eval"] {
        let (ok, err) = magr(&[command, "--device", "cuda:1"]);
        assert!(
            !ok && err.contains("cuda:1") && err.contains("`cuda` feature"),
            "{err}"
        );
    }
    let (ok, err) = magr(&["eval", "--reference", "x", "--reference-device", "cuda:1"]);
    assert!(
        !ok && err.contains("--reference-device cuda:1") && err.contains("`cuda` feature"),
        "{err}"
    );
    let (ok, err) = magr(&["eval", "--reference-device", "cpu"]);
    assert!(!ok && err.contains("--reference"), "{err}");
}

#[test]
fn an_existing_output_needs_force() {
    let dir = std::env::temp_dir().join(format!("magr-cli-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), b"mine").unwrap();
    let (ok, err) = magr(&["quantize", "--out", dir.to_str().unwrap()]);
    assert!(
        !ok && err.contains("--force") && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("keep.txt")).unwrap(), b"mine");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_model_is_named() {
    let (ok, err) = magr(&["eval"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
}

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

/// A scratch directory holding a tiny model (`model/`, f32 with a word-level tokenizer)
/// and texts of its words: `calib.txt` (2,000 words), `eval.txt` (400), `short.txt` (10)
/// and `empty.txt`.
fn workspace(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("magr-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    common::write_tiny_model_dir(&dir.join("model"), 8);
    std::fs::write(dir.join("calib.txt"), common::word_text(2000, 1)).unwrap();
    std::fs::write(dir.join("eval.txt"), common::word_text(400, 2)).unwrap();
    std::fs::write(dir.join("short.txt"), common::word_text(10, 3)).unwrap();
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The arguments of `magr quantize` on the tiny model with small calibration and
/// evaluation sizes; `extra` holds `(flag, value)` pairs that replace or add to the
/// defaults (value `""`: a switch).
fn tiny_args(dir: &Path, out: &Path, extra: &[(&str, &str)]) -> Vec<String> {
    let (model, calib, eval) = (
        dir.join("model"),
        dir.join("calib.txt"),
        dir.join("eval.txt"),
    );
    let mut flags = vec![
        ("--model", s(&model)),
        ("--calib", s(&calib)),
        ("--nsamples", "4"),
        ("--seqlen", "32"),
        ("--eval-text", s(&eval)),
        ("--eval-seqlen", "32"),
        ("--eval-windows", "4"),
        ("--magr-iters", "10"),
        ("--out", s(out)),
    ];
    // MagR's flags are refused without MagR.
    if extra
        .iter()
        .any(|&(f, v)| f == "--no-magr" || (f, v) == ("--preprocessor", "none"))
    {
        flags.retain(|(f, _)| *f != "--magr-iters");
    }
    for &(flag, value) in extra {
        match flags.iter_mut().find(|(f, _)| *f == flag) {
            Some(pair) => pair.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut args = vec!["quantize".to_string(), "--quiet".to_string()];
    for &(flag, value) in &flags {
        args.push(flag.to_string());
        if !value.is_empty() {
            args.push(value.to_string());
        }
    }
    args
}

/// `magr quantize` with [`tiny_args`].
fn quantize_tiny(dir: &Path, out: &Path, extra: &[(&str, &str)]) -> (bool, String) {
    let args = tiny_args(dir, out, extra);
    magr(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Nothing named `out` or `out.partial` exists.
fn assert_no_output(out: &Path) {
    assert!(!out.exists(), "{} was left behind", out.display());
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    assert!(!partial.exists(), "{} was left behind", partial.display());
}

#[test]
fn quantize_writes_every_output_and_they_load_back() {
    let dir = workspace("outputs");
    let out = dir.join("out");
    let (ok, err) = quantize_tiny(&dir, &out, &[("--bits", "3"), ("--group-size", "32")]);
    assert!(ok, "{err}");
    for file in [
        "report.json",
        "report.md",
        "magnitudes.svg",
        "fake-quant/config.json",
        "fake-quant/model.safetensors",
        "fake-quant/tokenizer.json",
        "gptq/config.json",
        "gptq/model.safetensors",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(!out.join("checkpoint").exists());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["bits"], 3);
    assert_eq!(report["pipeline"]["layers"].as_array().unwrap().len(), 14);
    assert!(report["quantized"]["ppl"].as_f64().unwrap().is_finite());
    assert!(
        std::fs::read_to_string(out.join("magnitudes.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    // The fake-quant directory is a model `magr eval` reads.
    let (ok, err) = magr(&[
        "eval",
        "--quiet",
        "--model",
        s(&out.join("fake-quant")),
        "--eval-text",
        s(&dir.join("eval.txt")),
        "--eval-seqlen",
        "32",
        "--eval-windows",
        "2",
    ]);
    assert!(ok, "{err}");
    // `magr inspect` lists the packed tensors and the quantization config.
    let output = Command::new(env!("CARGO_BIN_EXE_magr"))
        .args(["inspect", s(&out.join("gptq"))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("model.layers.0.self_attn.q_proj.qweight")
            && text.contains("I32")
            && text.contains("gptq"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_named_and_leave_no_output() {
    let dir = workspace("bad");
    let out = dir.join("out");
    // Empty and too-short calibration texts: named, no output.
    for text in ["empty.txt", "short.txt"] {
        let calib = dir.join(text);
        let (ok, err) = quantize_tiny(&dir, &out, &[("--calib", s(&calib))]);
        assert!(
            !ok && err.contains(text) && err.contains("fewer than seqlen"),
            "{err}"
        );
        assert_no_output(&out);
    }
    // A corrupt weights file: named.
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::copy(dir.join("model/config.json"), corrupt.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model/model.safetensors")).unwrap();
    std::fs::write(
        corrupt.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    let (ok, err) = quantize_tiny(&dir, &out, &[("--model", s(&corrupt))]);
    assert!(!ok && err.contains("model.safetensors"), "{err}");
    assert_no_output(&out);
    // A corrupt GGUF: named.
    let gguf = dir.join("broken.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00 not really").unwrap();
    let (ok, err) = quantize_tiny(&dir, &out, &[("--model", s(&gguf))]);
    assert!(!ok && err.contains("broken.gguf"), "{err}");
    assert_no_output(&out);
    // An output under a regular file cannot be created: named, before any work.
    let blocked = dir.join("calib.txt").join("out");
    let (ok, err) = quantize_tiny(&dir, &blocked, &[]);
    assert!(!ok && err.contains("calib.txt/out"), "{err}");
    // --resume without --out, and none with other formats.
    let (ok, err) = magr(&["quantize", "--resume"]);
    assert!(!ok && err.contains("--out"), "{err}");
    let (ok, err) = magr(&["quantize", "--formats", "none,gptq"]);
    assert!(!ok && err.contains("none"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run that fails after checkpointing a block keeps `OUT.partial` and says how to go on;
/// a new run without `--resume` refuses to throw it away; `--resume` finishes it with the
/// same bytes as an uninterrupted run.
#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let dir = workspace("resume");
    let whole = dir.join("whole");
    let (ok, err) = quantize_tiny(&dir, &whole, &[("--bits", "3")]);
    assert!(ok, "{err}");

    // The same model with a huge weight in block 1 (its products overflow): the run stops
    // there, after block 0 is saved.
    let model = dir.join("model");
    std::fs::remove_dir_all(&model).unwrap();
    common::write_tiny_model_dir_with(&model, 8, |tensors| {
        tensors
            .get_mut("model.layers.1.mlp.up_proj.weight")
            .unwrap()
            .data[5] = 1e30;
    });
    let out = dir.join("out");
    let (ok, err) = quantize_tiny(&dir, &out, &[("--bits", "3")]);
    assert!(
        !ok && err.contains("--resume") && err.contains("1 finished blocks"),
        "{err}"
    );
    assert!(!out.exists());
    let partial = dir.join("out.partial");
    assert!(partial.join("checkpoint/state.json").is_file());

    // Without --resume the checkpoint is not thrown away.
    let (ok, err) = quantize_tiny(&dir, &out, &[("--bits", "3")]);
    assert!(
        !ok && err.contains("--resume") && err.contains("--force"),
        "{err}"
    );
    assert!(partial.join("checkpoint/state.json").is_file());

    // The model repaired in place (block 0 is unchanged), the run resumes at block 1.
    std::fs::remove_dir_all(&model).unwrap();
    common::write_tiny_model_dir(&model, 8);
    let (ok, err) = quantize_tiny(&dir, &out, &[("--bits", "3"), ("--resume", "")]);
    assert!(ok, "{err}");
    assert!(!partial.exists() && !out.join("checkpoint").exists());
    for file in [
        "fake-quant/model.safetensors",
        "gptq/model.safetensors",
        "gptq/config.json",
    ] {
        assert!(
            std::fs::read(whole.join(file)).unwrap() == std::fs::read(out.join(file)).unwrap(),
            "{file} differs"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// RTN without MagR reads no calibration data: its weights are the same for every
/// calibration seed (the seeds bench runs it once on this ground), while OPTQ's move with
/// the seed.
#[test]
fn rtn_without_magr_does_not_depend_on_the_calibration_seed() {
    let dir = workspace("seed-free");
    let weights = |method: &str, seed: &str| {
        let out = dir.join(format!("{method}-{seed}"));
        let (ok, err) = quantize_tiny(
            &dir,
            &out,
            &[
                ("--method", method),
                ("--no-magr", ""),
                ("--bits", "3"),
                ("--seed", seed),
                ("--formats", "fake-quant"),
            ],
        );
        assert!(ok, "{err}");
        std::fs::read(out.join("fake-quant/model.safetensors")).unwrap()
    };
    assert!(weights("rtn", "0") == weights("rtn", "1"));
    assert!(weights("optq", "0") != weights("optq", "1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The GGUF flags: refusals named before any work, and a tokenizer that GGUF cannot
/// hold refused before quantizing, with nothing left behind.
#[test]
fn gguf_flags_are_checked_before_any_work() {
    let (ok, err) = magr(&["quantize", "--gguf-type", "q9_0"]);
    assert!(!ok && err.contains("q9_0"), "{err}");
    let (ok, err) = magr(&["quantize", "--gguf-type", "q4_0", "--act-order"]);
    assert!(!ok && err.contains("--act-order"), "{err}");
    let (ok, err) = magr(&["quantize", "--gguf-type", "q4_0", "--group-size", "64"]);
    assert!(!ok && err.contains("--group-size"), "{err}");
    let (ok, err) = magr(&["quantize", "--grid-fit", "weighted"]);
    assert!(!ok && err.contains("--gguf-type"), "{err}");

    let dir = workspace("gguf");
    let out = dir.join("out");
    // The gguf format without a GGUF grid.
    let (ok, err) = quantize_tiny(&dir, &out, &[("--formats", "gguf")]);
    assert!(!ok && err.contains("--gguf-type"), "{err}");
    assert_no_output(&out);
    // The tiny model's word-level tokenizer has no GGUF form: named before quantizing.
    let (ok, err) = quantize_tiny(
        &dir,
        &out,
        &[("--formats", "gguf"), ("--gguf-type", "q4_0")],
    );
    assert!(
        !ok && err.contains("gguf") && err.contains("tokenizer"),
        "{err}"
    );
    assert!(
        !err.contains("block 0"),
        "refused only after quantizing: {err}"
    );
    assert_no_output(&out);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// llama.cpp's presets on the command line: any case, the gptq format refused before any
/// work, `--gguf-type` alone writing fake-quant and gguf; a run on a model shaped for
/// K-quants records the preset and quantizes each layer on the preset's type.
#[test]
fn gguf_presets_from_the_command_line() {
    let (ok, err) = magr(&["quantize", "--gguf-type", "q4_k"]);
    assert!(
        !ok && err.contains("q4_k_m") && err.contains("q2_k"),
        "{err}"
    );
    let (ok, err) = magr(&["quantize", "--gguf-type", "Q4_K_M", "--act-order"]);
    assert!(!ok && err.contains("--act-order"), "{err}");

    let dir = workspace("presets");
    let out = dir.join("out");
    let (ok, err) = quantize_tiny(
        &dir,
        &out,
        &[("--gguf-type", "Q3_K_M"), ("--formats", "fake-quant,gptq")],
    );
    assert!(
        !ok && err.contains("gptq") && err.contains("q3_k_m"),
        "{err}"
    );
    assert!(
        !err.contains("block 0"),
        "refused only after quantizing: {err}"
    );
    assert_no_output(&out);

    // Without --formats, --gguf-type asks for the gguf file: the tiny model's word-level
    // tokenizer has no GGUF form, which is named before any work.
    let (ok, err) = quantize_tiny(&dir, &out, &[("--gguf-type", "q4_k_m")]);
    assert!(!ok && err.contains("tokenizer"), "{err}");
    assert_no_output(&out);

    // A model whose widths are multiples of 256: the layers are on the preset's grids.
    let model = dir.join("k-model");
    common::write_k_quant_model_dir(&model, 8, 3);
    let (ok, err) = quantize_tiny(
        &dir,
        &out,
        &[
            ("--model", s(&model)),
            ("--gguf-type", "Q4_K_M"),
            ("--formats", "fake-quant"),
            ("--method", "rtn"),
        ],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["gguf_type"], "q4_k_m");
    let fake = magr::llama_io::Model::load(out.join("fake-quant")).unwrap();
    let config = fake.config().clone();
    for block in 0..config.num_hidden_layers {
        for kind in magr::llama_io::LinearKind::ALL {
            // Each output row of 256 inputs: at most 16 (Q4_K) or 64 (Q6_K) distinct
            // values per sub-block of 32 or 16.
            let ty = magr::GgufPreset::Q4_K_M
                .layer_type(&config, block, kind)
                .unwrap();
            let (outputs, inputs) = fake.linear_shape(kind);
            let w = fake.linear_weight(block, kind).unwrap();
            for row in w.chunks(inputs).take(outputs) {
                for sub in row.chunks(ty.group_size()) {
                    let distinct: std::collections::BTreeSet<u32> =
                        sub.iter().map(|v| v.to_bits()).collect();
                    assert!(distinct.len() <= 1 << ty.bits(), "{ty}: {}", distinct.len());
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Options of a method or preprocessor that the run does not use are refused, not
/// silently ignored; windows longer than the model's context are refused before any
/// work.
#[test]
fn ignored_options_and_overlong_windows_are_refused() {
    for (args, flag, owner) in [
        (
            &["--method", "rtn", "--sweeps", "5"][..],
            "--sweeps",
            "`rtn`",
        ),
        (
            &["--method", "optq", "--cd-lambda", "0.5"][..],
            "--cd-lambda",
            "`optq`",
        ),
        (
            &["--no-magr", "--magr-iters", "10"][..],
            "--magr-iters",
            "`none`",
        ),
        (
            &["--preprocessor", "none", "--magr-solver", "plain"][..],
            "--magr-solver",
            "`none`",
        ),
        (
            &["--no-magr", "--magr-hessian", "last"][..],
            "--magr-hessian",
            "`none`",
        ),
        (&["--no-magr", "--alpha", "0.01"][..], "--alpha", "`none`"),
        (
            &["--eval-reference", "--eval-windows", "0"][..],
            "--eval-reference",
            "--eval-windows is 0",
        ),
        (
            &["--eval-float", "--eval-windows", "0"][..],
            "--eval-float",
            "--eval-windows is 0",
        ),
    ] {
        let mut all = vec!["quantize"];
        all.extend(args);
        let (ok, err) = magr(&all);
        assert!(
            !ok && err.contains(flag) && err.contains(owner),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("/nonexistent"),
            "checked before the model: {err}"
        );
    }

    // The tiny model's context is 256 tokens.
    let dir = workspace("context");
    let out = dir.join("out");
    for flag in ["--seqlen", "--eval-seqlen"] {
        let (ok, err) = quantize_tiny(&dir, &out, &[(flag, "300"), ("--eval-float", "")]);
        assert!(
            !ok && err.contains("300") && err.contains("context of 256"),
            "{flag}: {err}"
        );
        assert_no_output(&out);
    }
    let (ok, err) = magr(&[
        "eval",
        "--model",
        s(&dir.join("model")),
        "--eval-text",
        s(&dir.join("eval.txt")),
        "--eval-seqlen",
        "300",
    ]);
    assert!(!ok && err.contains("context of 256"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model directory without `tokenizer.json` is named in the error, with the file it
/// lacks.
#[test]
fn a_missing_tokenizer_names_the_model_directory() {
    let dir = workspace("notok");
    let model = dir.join("model");
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let (ok, err) = magr(&[
        "eval",
        "--model",
        s(&model),
        "--eval-text",
        s(&dir.join("eval.txt")),
    ]);
    assert!(
        !ok && err.contains(s(&model)) && err.contains("tokenizer.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With `RUST_BACKTRACE=1`, candle appends a stack trace to its errors; ours stay one
/// line naming the file (the stripping itself: `llama-io`'s `CandleMessage` tests).
#[test]
fn gguf_errors_carry_no_backtrace() {
    let dir = workspace("bt");
    let path = dir.join("bad-value.gguf");
    // GGUF v3, no tensors, one metadata entry `abc` of the unknown value type 99.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(3u64.to_le_bytes());
    bytes.extend(b"abc");
    bytes.extend(99u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    for command in ["inspect", "eval"] {
        let mut args = vec![command];
        if command == "eval" {
            args.push("--model");
        }
        args.push(s(&path));
        let output = Command::new(env!("CARGO_BIN_EXE_magr"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            err.contains("bad-value.gguf") && err.contains("value type 99"),
            "{command}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{command}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A second `magr quantize` on an output that a running one holds is refused at once,
/// naming the lock, and touches nothing (the first run is this test, holding the lock
/// as a run does).
#[test]
fn a_generated_model_quantizes_with_bf16_hidden_states_and_bad_shapes_are_named() {
    let dir = workspace("gen-model");
    let model = dir.join("generated");
    let (ok, err) = magr(&[
        "gen-model",
        "--shape",
        "tiny",
        "--out",
        s(&model),
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let (ok, err) = magr(&["gen-model", "--shape", "tiny", "--out", s(&model)]);
    assert!(!ok && err.contains(s(&model)), "{err}");
    let other = dir.join("other");
    let (ok, err) = magr(&["gen-model", "--shape", "llama-8b", "--out", s(&other)]);
    assert!(
        !ok && err.contains("llama-8b") && err.contains("llama-7b"),
        "{err}"
    );
    let (ok, err) = magr(&[
        "gen-model",
        "--shape",
        "tiny",
        "--blocks",
        "3",
        "--out",
        s(&other),
    ]);
    assert!(!ok && err.contains("--blocks 3"), "{err}");
    assert!(!other.exists());

    let out = dir.join("out");
    let (ok, err) = quantize_tiny(
        &dir,
        &out,
        &[("--model", s(&model)), ("--hidden-dtype", "bf16")],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["pipeline"]["layers"].as_array().unwrap().len(), 14);
    assert_eq!(report["settings"]["hidden_dtype"], "bf16");
    // This process's peak memory (Linux), which a real run's tens of MB exceed.
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 10 << 20);
    // The hidden states on disk: the same weights.
    let spilled = dir.join("spilled");
    let (ok, err) = quantize_tiny(
        &dir,
        &spilled,
        &[
            ("--model", s(&model)),
            ("--hidden-dtype", "bf16"),
            ("--hidden-store", "disk"),
        ],
    );
    assert!(ok, "{err}");
    let weights = |out: &Path| std::fs::read(out.join("fake-quant/model.safetensors")).unwrap();
    assert!(weights(&spilled) == weights(&out));
    assert!(!spilled.join("checkpoint").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_run_on_the_same_output_is_refused() {
    let dir = workspace("lock");
    let out = dir.join("out");
    let first = magr::run::Staging::create(&out, false, false).unwrap();
    std::fs::write(first.partial().join("mine.txt"), "first run").unwrap();
    for extra in [&[][..], &[("--force", "")][..], &[("--resume", "")][..]] {
        let (ok, err) = quantize_tiny(&dir, &out, extra);
        assert!(
            !ok && err.contains("another magr run") && err.contains("out.lock"),
            "{extra:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(first.partial().join("mine.txt")).unwrap(),
        "first run"
    );
    drop(first);
    let (ok, err) = quantize_tiny(&dir, &out, &[]);
    assert!(ok, "{err}");
    assert!(!dir.join("out.lock").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bytes a directory takes on a file system of 4 KiB pages.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                disk_bytes(&e.path())
            } else {
                e.metadata().unwrap().len().next_multiple_of(4096)
            }
        })
        .sum()
}

/// The model files of an output (`report.json` and `report.md` hold timings).
fn model_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = common::tree(dir);
    files.retain(|p, _| p.components().count() > 1);
    files
}

/// On a file system that fills up (a tmpfs of a chosen size in a private mount namespace
/// made by `unshare`, so no privilege is needed), a run that replaces an earlier output
/// stops with the system's error naming the file, leaves the earlier output byte for
/// byte, keeps its checkpoint when it has one and no stray temporary, and once there is
/// space again `--resume` finishes it with the bytes of an uninterrupted run. The file
/// system shrinks after the earlier run to sizes that sweep from "the earlier output and
/// a little" to "enough", so that the disk fills at every stage: the first checkpoint,
/// later ones, the outputs.
#[test]
fn a_full_disk_keeps_the_earlier_output_and_a_resumable_run() {
    let dir = workspace("full");
    let first: &[(&str, &str)] = &[("--bits", "3"), ("--formats", "fake-quant")];
    let second: &[(&str, &str)] = &[
        ("--bits", "3"),
        ("--dtype", "f32"),
        ("--formats", "fake-quant,gptq"),
    ];
    // References on the ordinary disk.
    let (ok, err) = quantize_tiny(&dir, &dir.join("ref-first"), first);
    assert!(ok, "{err}");
    let (ok, err) = quantize_tiny(&dir, &dir.join("ref-second"), second);
    assert!(ok, "{err}");
    let (a, b) = (
        disk_bytes(&dir.join("ref-first")),
        disk_bytes(&dir.join("ref-second")),
    );

    let magr_bin = env!("CARGO_BIN_EXE_magr");
    let quote = |args: Vec<String>| {
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut resumable_failures = 0;
    let mut failures = 0;
    for eighths in 1..=24u64 {
        // The earlier output is on the disk already: room for an eighth of the new
        // output, up to three times it.
        let size_kib = (a + b * eighths / 8).div_ceil(4096) * 4;
        let fs = dir.join("fs");
        let scratch = dir.join(format!("size-{size_kib}k"));
        std::fs::create_dir_all(&fs).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let out = fs.join("out");
        let script = format!(
            "set -u\n\
             mount -t tmpfs -o size=64m tmpfs '{fs}' || exit 90\n\
             '{magr_bin}' {first} || exit 91\n\
             cp -r '{out}' '{scratch}/first'\n\
             mount -o remount,size={size_kib}k '{fs}' || exit 92\n\
             '{magr_bin}' {second} 2> '{scratch}/err'\n\
             echo $? > '{scratch}/rc'\n\
             ls -a '{fs}' > '{scratch}/listing'\n\
             cp -r '{out}' '{scratch}/after'\n\
             [ -d '{out}.partial' ] && cp -r '{out}.partial' '{scratch}/partial'\n\
             mount -o remount,size=64m '{fs}' || exit 93\n\
             '{magr_bin}' {resume} || exit 94\n\
             cp -r '{out}' '{scratch}/resumed'\n",
            fs = s(&fs),
            out = s(&out),
            scratch = s(&scratch),
            first = quote(tiny_args(&dir, &out, first)),
            second = quote(tiny_args(
                &dir,
                &out,
                &[second, &[("--force", "")]].concat()
            )),
            resume = quote(tiny_args(
                &dir,
                &out,
                &[second, &[("--force", ""), ("--resume", "")]].concat()
            )),
        );
        let status = Command::new("unshare")
            .args(["-r", "-m", "sh", "-c", &script])
            .status()
            .expect("unshare (util-linux) runs");
        assert!(
            status.success(),
            "{size_kib} KiB: script stopped with {status}"
        );

        let listing = std::fs::read_to_string(scratch.join("listing")).unwrap();
        let rc = std::fs::read_to_string(scratch.join("rc")).unwrap();
        let err = std::fs::read_to_string(scratch.join("err")).unwrap_or_default();
        if rc.trim() != "0" {
            failures += 1;
            assert_eq!(
                common::tree(&scratch.join("first")),
                common::tree(&scratch.join("after")),
                "{size_kib} KiB: the earlier output changed"
            );
            assert!(
                err.contains("No space left on device") && err.contains(s(&fs)),
                "{size_kib} KiB: {err}"
            );
            let partial = scratch.join("partial");
            if partial.join("checkpoint/state.json").exists() {
                resumable_failures += 1;
                assert!(err.contains("--resume"), "{size_kib} KiB: {err}");
            }
            // Nothing but the output, its staging directory (with a checkpoint), and the
            // lock of a run that ended.
            for name in listing.lines() {
                assert!(
                    [".", "..", "out", "out.partial"].contains(&name),
                    "{size_kib} KiB: left behind: {name}"
                );
            }
            if partial.exists() {
                assert!(
                    partial.join("checkpoint/state.json").exists(),
                    "{size_kib} KiB: a staging directory without a checkpoint was kept"
                );
            }
        }
        assert_eq!(
            model_files(&scratch.join("resumed")),
            model_files(&dir.join("ref-second")),
            "{size_kib} KiB: the finished run differs from an uninterrupted one"
        );
        std::fs::remove_dir_all(&scratch).unwrap();
    }
    assert!(
        resumable_failures > 0 && failures > resumable_failures,
        "the sizes did not fill the disk both before and after a checkpoint \
         ({failures} failures, {resumable_failures} resumable; outputs {a} and {b} bytes)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `scripts/gptq_check.py` (numpy, none of magr's code) dequantizes `gptq/` the way GPTQ
/// loaders do and finds `fake-quant/`'s weights bit for bit, for each zero-point layout
/// and grouping: asymmetric (v2) and symmetric (v1), per channel, groups that divide the
/// widths and groups that leave a shorter last one, act-order, 2 to 8 bits. Needs a
/// python with numpy and safetensors in `MAGR_PYTHON` (`cargo xtask ci` makes one).
#[test]
#[ignore = "needs MAGR_PYTHON with numpy and safetensors; run by `cargo xtask ci`"]
fn gptq_check_py_finds_the_fake_quant_weights_in_every_layout() {
    let python = std::env::var("MAGR_PYTHON").expect("MAGR_PYTHON: a python with numpy");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gptq_check.py");
    let dir = workspace("gptq-check");
    for (n, extra) in [
        &[("--bits", "4")][..],
        &[("--bits", "3"), ("--group-size", "48"), ("--act-order", "")][..],
        &[("--bits", "4"), ("--group-size", "32"), ("--symmetric", "")][..],
        &[("--bits", "2"), ("--group-size", "16"), ("--no-magr", "")][..],
        &[("--bits", "8"), ("--symmetric", ""), ("--act-order", "")][..],
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.join(format!("out-{n}"));
        let mut extra = extra.to_vec();
        extra.extend([("--dtype", "f16"), ("--eval-windows", "0")]);
        let (ok, err) = quantize_tiny(&dir, &out, &extra);
        assert!(ok, "{extra:?}: {err}");
        let output = Command::new(&python)
            .arg(&script)
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("all weights identical"),
            "{extra:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{extra:?}: {}", stdout.trim());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `magr eval --reference`: a quantized model against its float original, on the
/// windows `magr quantize` evaluated, gives the perplexities the run reported, a
/// positive divergence and a record per block and layer; models of other shapes are
/// refused by name.
#[test]
fn eval_against_the_float_model() {
    let dir = workspace("eval-reference");
    let out = dir.join("out");
    let (ok, err) = quantize_tiny(
        &dir,
        &out,
        &[
            ("--bits", "3"),
            ("--eval-float", ""),
            ("--eval-reference", ""),
        ],
    );
    assert!(ok, "{err}");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let json = dir.join("eval.json");
    let eval_args = |model: &Path, reference: &Path| {
        vec![
            "eval".to_string(),
            "--quiet".into(),
            "--model".into(),
            s(model).into(),
            "--reference".into(),
            s(reference).into(),
            "--eval-text".into(),
            s(&dir.join("eval.txt")).into(),
            "--eval-seqlen".into(),
            "32".into(),
            "--eval-windows".into(),
            "4".into(),
            "--report".into(),
            s(&json).into(),
        ]
    };
    let args = eval_args(&out.join("fake-quant"), &dir.join("model"));
    let (ok, err) = magr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        (a - b).abs() <= 1e-6 * b
    };
    // The float model's perplexity as the run gave it; the written model's (its weights
    // stored in f16) as `magr eval` gives it alone.
    assert!(
        close(&e["reference"]["ppl"], &run["float"]["ppl"]),
        "{e} vs {run}"
    );
    // `quantize --eval-reference` compared the quantized weights held in f32.
    let q = &run["quantized"]["reference"];
    assert!(close(&q["ppl"], &run["float"]["ppl"]), "{run}");
    assert_eq!(q["layers"].as_array().unwrap().len(), 14);
    assert!(q["mean_kl"].as_f64().unwrap() > 0.0);
    let alone = dir.join("alone.json");
    let mut args_alone = args.clone();
    args_alone.splice(4..6, []);
    *args_alone.last_mut().unwrap() = s(&alone).into();
    let (ok, err) = magr(&args_alone.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let alone: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alone).unwrap()).unwrap();
    assert!(alone.get("reference").is_none());
    assert!(close(&e["ppl"], &alone["ppl"]), "{e} vs {alone}");
    assert!(e["reference"]["mean_kl"].as_f64().unwrap() > 0.0);
    let agreement = e["reference"]["top1_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    assert_eq!(e["reference"]["block_error"].as_array().unwrap().len(), 2);
    let layers = e["reference"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 14);
    assert_eq!(layers[13]["layer"], "down_proj");
    assert!(
        layers
            .iter()
            .all(|l| l["loss_per_token"].as_f64().unwrap() > 0.0)
    );

    let generated = dir.join("generated");
    let (ok, err) = magr(&["gen-model", "--shape", "tiny", "--out", s(&generated)]);
    assert!(ok, "{err}");
    std::fs::remove_file(&json).unwrap();
    let args = eval_args(&dir.join("model"), &generated);
    let (ok, err) = magr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && err.contains("differ in"), "{err}");
    assert!(!json.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rotated_model_scores_as_the_original_and_an_existing_output_is_kept() {
    let dir = workspace("rotate");
    let (model, rotated) = (dir.join("model"), dir.join("rotated"));
    let rotate = ["rotate", "--quiet", "--model", s(&model), "--seed", "3"];
    let (ok, err) = magr(&[&rotate[..], &["--out", s(&rotated)]].concat());
    assert!(ok, "{err}");
    let json = dir.join("eval.json");
    let (ok, err) = magr(&[
        "eval",
        "--quiet",
        "--model",
        s(&rotated),
        "--reference",
        s(&model),
        "--eval-text",
        s(&dir.join("eval.txt")),
        "--eval-seqlen",
        "32",
        "--eval-windows",
        "4",
        "--report",
        s(&json),
    ]);
    assert!(ok, "{err}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (ppl, reference) = (
        e["ppl"].as_f64().unwrap(),
        e["reference"]["ppl"].as_f64().unwrap(),
    );
    // The same function up to f32 rounding; the weights themselves all moved.
    assert!((ppl - reference).abs() <= 1e-5 * reference, "{e}");
    assert!(e["reference"]["mean_kl"].as_f64().unwrap() < 1e-8, "{e}");
    assert!(
        e["reference"]["top1_agreement"].as_f64().unwrap() == 1.0,
        "{e}"
    );
    assert_ne!(common::tree(&model), common::tree(&rotated));
    // An existing output is refused without --force, and left as it was.
    let before = common::tree(&rotated);
    let (ok, err) = magr(&[&rotate[..], &["--out", s(&rotated)]].concat());
    assert!(
        !ok && err.contains("--force") && err.contains(s(&rotated)),
        "{err}"
    );
    assert_eq!(common::tree(&rotated), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
