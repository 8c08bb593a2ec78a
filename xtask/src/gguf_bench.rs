//! `cargo xtask bench --gguf`: magr's GGUF files against llama.cpp's own quantizer on
//! SmolLM2, judged by llama.cpp's perplexity (and magr's), into the GGUF section of
//! `docs/results.md`.
//!
//! For each block format or K-quant preset of [`TYPES`], five files: (a) `llama-quantize`
//! from the F32 GGUF, (b) the same with an importance matrix from `llama-imatrix` on the
//! calibration text, (c) magr RTN on the format's grid, (d) magr OPTQ, (e) magr
//! MagR+OPTQ; token embedding and output in F32 on every side; for a legacy format
//! `--pure` on llama.cpp's side (every linear layer in the format, like magr's), for a
//! preset the preset's own per-layer types on both sides. Each file is scored by `llama-perplexity -c 2048 --chunks 40`
//! on WikiText-2 test (lines joined by a blank line) and by `magr eval` (the papers'
//! protocol, first 40 windows of 2048). Every cell is cached under `target/bench/gguf/`,
//! so an interrupted bench continues where it stopped, and the section is rewritten after
//! every cell.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use magr_report::{Evaluation, RunReport};

use crate::table::{commit, machine, path_str, read_meta, read_typed, run_cell, write_meta};

/// The formats of the table, in the order they are measured: `(llama.cpp's name, magr's
/// name, bits per weight)`; the bits are `None` for a K-quant preset (a mixture of types:
/// see the file size). The most used preset first; Q3_K_S, which stores the same types
/// as Q2_K on SmolLM2, after it.
const TYPES: [(&str, &str, Option<f64>); 9] = [
    ("Q4_0", "q4_0", Some(4.5)),
    ("Q4_1", "q4_1", Some(5.0)),
    ("Q5_0", "q5_0", Some(5.5)),
    ("Q4_K_M", "q4_k_m", None),
    ("Q3_K_M", "q3_k_m", None),
    ("Q2_K", "q2_k", None),
    ("Q3_K_S", "q3_k_s", None),
    ("Q5_K_M", "q5_k_m", None),
    ("Q6_K", "q6_k", None),
];

/// Calibration windows of 2048 tokens (Wikipedia excerpt) and evaluation chunks.
const CALIBRATION: &str = "32";
const EVAL_CHUNKS: &str = "40";

/// Where the GGUF section of `docs/results.md` starts; everything after it is this
/// bench's (the main table keeps it when it rewrites the file).
pub const SECTION_MARKER: &str = "<!-- cargo xtask bench --gguf: everything below -->";

/// A row of the table.
struct Row {
    id: &'static str,
    label: &'static str,
}

const ROWS: [Row; 5] = [
    Row {
        id: "llama",
        label: "llama.cpp `llama-quantize`",
    },
    Row {
        id: "llama-imatrix",
        label: "llama.cpp `llama-quantize` + imatrix",
    },
    Row {
        id: "rtn",
        label: "magr RTN",
    },
    Row {
        id: "optq",
        label: "magr OPTQ",
    },
    Row {
        id: "magr-optq",
        label: "magr MagR+OPTQ",
    },
];

/// The magr flags of a row (none for llama.cpp's rows).
fn magr_flags(row: &str) -> &'static [&'static str] {
    match row {
        "rtn" => &["--method", "rtn", "--no-magr"],
        "optq" => &["--method", "optq", "--no-magr"],
        "magr-optq" => &["--method", "optq", "--magr-solver", "plain"],
        _ => &[],
    }
}

/// The tools and inputs of the bench.
pub struct Inputs<'a> {
    /// The repository root.
    pub root: &'a Path,
    /// The `magr` binary built for the bench.
    pub magr: &'a Path,
    /// llama.cpp's tools.
    pub llama_cpp: &'a Path,
    /// The SmolLM2 GGUF.
    pub model: &'a Path,
    /// The calibration text (the Wikipedia excerpt).
    pub calibration: &'a Path,
    /// WikiText-2 test.
    pub wikitext: &'a Path,
    /// `docs/results.md`.
    pub results: &'a Path,
}

fn tool(i: &Inputs<'_>, name: &str) -> PathBuf {
    i.llama_cpp.join(name)
}

/// The output of a command run to the end, or an error naming it.
fn output(program: &Path, args: &[&str]) -> Result<String, String> {
    eprintln!("xtask: {} {}", program.display(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("could not run {}: {e}", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// llama-perplexity's final estimate in its output.
fn llama_ppl(text: &str) -> Result<f64, String> {
    text.split("Final estimate: PPL =")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "llama-perplexity printed no final estimate".to_string())
}

/// Runs every cell not yet measured (all with `fresh`), rewriting the section after each.
pub fn run(i: &Inputs<'_>, fresh: bool) -> Result<(), String> {
    let dir = i.root.join("target/bench/gguf");
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let commit = commit(i.root);
    let machine = machine();

    // The F32 model, the importance matrix and the joined evaluation text, once.
    let f32_gguf = dir.join("F32.gguf");
    if !f32_gguf.exists() {
        let partial = dir.join("F32.partial.gguf");
        output(
            &tool(i, "llama-quantize"),
            &[
                "--allow-requantize",
                path_str(i.model)?,
                path_str(&partial)?,
                "F32",
            ],
        )?;
        std::fs::rename(&partial, &f32_gguf).map_err(|e| e.to_string())?;
    }
    let imatrix = dir.join("imatrix.dat");
    if !imatrix.exists() {
        let partial = dir.join("imatrix.partial.dat");
        output(
            &tool(i, "llama-imatrix"),
            &[
                "-m",
                path_str(&f32_gguf)?,
                "-f",
                path_str(i.calibration)?,
                "-c",
                "2048",
                "--chunks",
                CALIBRATION,
                "-t",
                "2",
                "-o",
                path_str(&partial)?,
                "--output-format",
                "dat",
            ],
        )?;
        std::fs::rename(&partial, &imatrix).map_err(|e| e.to_string())?;
    }
    let joined = dir.join("wiki.test.joined.txt");
    if !joined.exists() {
        let text = std::fs::read_to_string(i.wikitext)
            .map_err(|e| format!("{}: {e}", i.wikitext.display()))?;
        atomic_fs::write(&joined, text.lines().collect::<Vec<_>>().join("\n\n"))
            .map_err(|e| e.to_string())?;
    }
    write_section(&dir, i.results, &machine)?;

    // The float model every row starts from.
    let float = dir.join("float");
    if !float.join("meta.txt").exists() {
        std::fs::create_dir_all(&float).map_err(|e| format!("{}: {e}", float.display()))?;
        perplexities(i, &f32_gguf, &float, &joined)?;
        write_meta(&float, &commit, 0.0)?;
        write_section(&dir, i.results, &machine)?;
    }

    for (llama_type, magr_type, bpw) in TYPES {
        for row in &ROWS {
            let cell = dir.join(format!("{}-{magr_type}", row.id));
            if cell.join("meta.txt").exists() || cell.join("failed.txt").exists() {
                continue;
            }
            std::fs::create_dir_all(&cell).map_err(|e| format!("{}: {e}", cell.display()))?;
            let format = (llama_type, magr_type, bpw.is_some());
            if let Err(e) = measure(i, &dir, &cell, row.id, format, &joined) {
                eprintln!("xtask: {e}");
                let path = cell.join("failed.txt");
                std::fs::write(&path, format!("{commit}\n{e}\n"))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            } else {
                let seconds: f64 = std::fs::read_to_string(cell.join("seconds.txt"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(f64::NAN);
                write_meta(&cell, &commit, seconds)?;
            }
            write_section(&dir, i.results, &machine)?;
        }
    }
    eprintln!("xtask: wrote the GGUF section of {}", i.results.display());
    Ok(())
}

/// One cell: makes the file (timed), then both perplexities. `format` is llama.cpp's
/// name, magr's, and whether llama.cpp is told `--pure` (a legacy format).
fn measure(
    i: &Inputs<'_>,
    dir: &Path,
    cell: &Path,
    row: &str,
    (llama_type, magr_type, pure): (&str, &str, bool),
    joined: &Path,
) -> Result<(), String> {
    let start = Instant::now();
    let gguf = match row {
        "llama" | "llama-imatrix" => {
            let file = cell.join(format!("{llama_type}.gguf"));
            let imatrix = dir.join("imatrix.dat");
            let mut args = vec![
                "--token-embedding-type",
                "f32",
                "--output-tensor-type",
                "f32",
            ];
            if pure {
                args.push("--pure");
            }
            if row == "llama-imatrix" {
                args.extend(["--imatrix", path_str(&imatrix)?]);
            }
            let f32_gguf = dir.join("F32.gguf");
            args.extend([path_str(&f32_gguf)?, path_str(&file)?, llama_type]);
            output(&tool(i, "llama-quantize"), &args)?;
            file
        }
        _ => {
            let out = cell.join("out");
            let mut args = vec![
                "quantize",
                "--quiet",
                "--model",
                path_str(i.model)?,
                "--gguf-type",
                magr_type,
                "--nsamples",
                CALIBRATION,
                "--seqlen",
                "2048",
                "--seed",
                "0",
                "--eval-windows",
                "0",
                "--formats",
                "gguf",
                "--gguf-float",
                "f32",
                "--force",
                "--out",
                path_str(&out)?,
            ];
            args.extend(magr_flags(row));
            run_cell(i.magr, &args)?;
            out.join("gguf/model.gguf")
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    std::fs::write(cell.join("seconds.txt"), format!("{seconds:.1}\n"))
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::metadata(&gguf).map_err(|e| e.to_string())?.len();
    std::fs::write(cell.join("bytes.txt"), format!("{bytes}\n")).map_err(|e| e.to_string())?;
    perplexities(i, &gguf, cell, joined)
}

/// Both perplexities of the file `gguf` into `cell`: `llama-ppl.txt` and `eval.json`.
fn perplexities(i: &Inputs<'_>, gguf: &Path, cell: &Path, joined: &Path) -> Result<(), String> {
    let llama = output(
        &tool(i, "llama-perplexity"),
        &[
            "-m",
            path_str(gguf)?,
            "-f",
            path_str(joined)?,
            "-c",
            "2048",
            "--chunks",
            EVAL_CHUNKS,
            "-t",
            "2",
        ],
    )?;
    std::fs::write(
        cell.join("llama-ppl.txt"),
        format!("{}\n", llama_ppl(&llama)?),
    )
    .map_err(|e| e.to_string())?;
    let eval = cell.join("eval.json");
    run_cell(
        i.magr,
        &[
            "eval",
            "--quiet",
            "--model",
            path_str(gguf)?,
            "--eval-windows",
            EVAL_CHUNKS,
            "--report",
            path_str(&eval)?,
        ],
    )?;
    Ok(())
}

fn read_number(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Rewrites the GGUF section of `results` (from [`SECTION_MARKER`]) from every cell
/// measured so far, keeping the other sections.
fn write_section(dir: &Path, results: &Path, machine: &str) -> Result<(), String> {
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION_MARKER}\n\n## GGUF: magr against llama.cpp\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench --gguf`. Model: SmolLM2-135M-Instruct, its GGUF's Q4_1 \
         weights dequantized to F32 (`llama-quantize --allow-requantize ... F32`). Each legacy \
         format's file has every linear layer in the format (`--pure` for llama-quantize); a \
         K-quant preset's file has the preset's per-layer types on both sides (on this model \
         every 576-wide layer falls back to a legacy type: only `ffn_down` holds K-quants); \
         token embedding and output in F32 on every side. llama.cpp's importance matrix: `llama-imatrix -c 2048 \
         --chunks {CALIBRATION}` on the Wikipedia excerpt (its first {CALIBRATION} chunks of 2048 \
         tokens); magr's calibration: {CALIBRATION} windows of 2048 tokens of the same text, \
         seed 0. magr: block parameters by the diag(H)-weighted search (`--grid-fit weighted`, \
         the default), MagR with the per-group reference alpha 1e-4. \
         Perplexity of every file by `llama-perplexity -c 2048 --chunks {EVAL_CHUNKS}` (scores \
         the second half of each chunk) and by `magr eval` (first {EVAL_CHUNKS} windows of 2048, \
         every token) on WikiText-2 test, lines joined by a blank line. llama.cpp built by \
         `cargo xtask llama-cpp` (llama.cpp vendored in llama-cpp-python 0.3.36, AVX2). \
         Machine: {machine}.\n"
    );
    let float = dir.join("float");
    if read_meta(&float).is_some() {
        let llama = read_number(&float.join("llama-ppl.txt"));
        let magr = read_typed::<Evaluation>(&float.join("eval.json"))?.map(|e| e.ppl);
        let _ = writeln!(
            md,
            "The float model (the F32 GGUF every row starts from): llama.cpp ppl **{}**, magr \
             eval ppl **{}**.\n",
            llama.map_or("-".into(), |v| format!("{v:.2}")),
            magr.map_or("-".into(), |v| format!("{v:.2}"))
        );
    }
    let _ = writeln!(
        md,
        "| format | method | llama.cpp ppl | magr eval ppl | ratio to llama.cpp + imatrix | file MB | bits/weight (linear) | quantization s | commit |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (llama_type, magr_type, bpw) in TYPES {
        let imatrix_ppl =
            read_number(&dir.join(format!("llama-imatrix-{magr_type}/llama-ppl.txt")));
        for row in &ROWS {
            let cell = dir.join(format!("{}-{magr_type}", row.id));
            let Some((commit, _, _)) = read_meta(&cell) else {
                let state = if cell.join("failed.txt").exists() {
                    "failed (see target/bench/gguf)"
                } else {
                    "…"
                };
                let _ = writeln!(md, "| {llama_type} | {} | {state} | | | | | | |", row.label);
                continue;
            };
            let llama_ppl = read_number(&cell.join("llama-ppl.txt"));
            let magr_ppl = read_typed::<Evaluation>(&cell.join("eval.json"))?.map(|e| e.ppl);
            let seconds = match read_typed::<RunReport>(&cell.join("out/report.json"))? {
                Some(r) => r.seconds_total,
                None => read_number(&cell.join("seconds.txt")).unwrap_or(f64::NAN),
            };
            let mb = read_number(&cell.join("bytes.txt")).map_or(f64::NAN, |b| b / 1e6);
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let ratio = match (llama_ppl, imatrix_ppl) {
                (Some(a), Some(b)) => format!("{:.3}", a / b),
                _ => "-".to_string(),
            };
            let bpw = bpw.map_or("mixture".to_string(), |b| b.to_string());
            let _ = writeln!(
                md,
                "| {llama_type} | {} | {} | {} | {ratio} | {mb:.1} | {bpw} | {seconds:.0} | `{commit}` |",
                row.label,
                fmt(llama_ppl),
                fmt(magr_ppl)
            );
        }
    }
    let _ = writeln!(
        md,
        "\nOn this model the 32-input block formats are nearly degenerate (the data README): \
         its float weights are the dequantized Q4_1 model, so every Q4_1 block is exactly \
         representable: llama.cpp (with or without an imatrix), magr RTN and magr OPTQ (which \
         then has no error to carry) all give back the float weights (`magr eval` scores them as the \
         float model; llama.cpp's figure differs from the F32 file's by its 8-bit rounding of \
         activations in quantized products), and only MagR, which changes the weights first, \
         can move away from the float model. Q4_0 and Q5_0 blocks \
         lie close to that lattice: there OPTQ's error updates, which lower the layer loss on \
         the calibration windows, move the weights off it and score worse on WikiText-2 than \
         rounding does. A comparison that means something for MagR and OPTQ needs a model \
         whose float weights lie on no grid."
    );
    let _ = writeln!(
        md,
        "\nCommands: `cargo xtask bench --gguf` (continues an interrupted table; `--gguf --fresh` \
         measures again). Per-cell files and logs stay in `target/bench/gguf/`."
    );
    crate::results::write_section(results, Some(SECTION_MARKER), &md)
}
