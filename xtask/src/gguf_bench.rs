//! `cargo xtask bench --gguf`: magr's GGUF files against llama.cpp's own quantizer on
//! SmolLM2 with its residual stream rotated, judged by llama.cpp's perplexity (and
//! magr's), into the GGUF section of `docs/results.md`.
//!
//! SmolLM2's float weights are its GGUF's Q4_1 weights dequantized, so 32-input block
//! grids are near-degenerate on them; the bench's float model is that model with its
//! norm gains folded and its residual stream rotated by a seeded random orthogonal
//! matrix (`magr rotate`): the same function, weights on no grid. For each K-quant
//! preset or block format of [`TYPES`], five files made from it: (a) `llama-quantize`,
//! (b) the same with an importance matrix from `llama-imatrix` on the calibration text,
//! (c) magr RTN on the format's grid, (d) magr OPTQ, (e) magr MagR+OPTQ with MagR's
//! alpha chosen per layer on held-out calibration windows (`--alpha auto`: a fixed alpha
//! costs every layer the same error however fine the grid); token embedding
//! and output in F32 on every side; for a legacy format `--pure` on llama.cpp's side
//! (every linear layer in the format, like magr's), for a preset the preset's own
//! per-layer types on both sides. Each file is scored by `llama-perplexity -c 2048
//! --chunks 40` on WikiText-2 test (lines joined by a blank line) and by `magr eval`
//! (the papers' protocol, first 40 windows of 2048). Each measured cell's numbers are
//! recorded in `docs/bench/gguf/<cell>.json` ([`crate::records`], committed), so the
//! bench, several hours of 2 cores, continues on another machine; the section is
//! rewritten from the records after every cell. The files stay in `target/bench/gguf/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use magr_report::{Evaluation, RunReport};
use serde::{Deserialize, Serialize};

use crate::records::{Machines, Outcome, Record, Records};
use crate::table::{commit, path_str, read_typed, run_cell};

/// The presets and formats of the table, in the order they are measured: `(llama.cpp's
/// name, magr's name, bits per weight)`; the bits are `None` for a K-quant preset (a
/// mixture of types: see the file size). The K-quant presets first, the most used
/// first; Q3_K_S, which stores the same types as Q2_K on SmolLM2, after Q2_K.
const TYPES: [(&str, &str, Option<f64>); 9] = [
    ("Q4_K_M", "q4_k_m", None),
    ("Q3_K_M", "q3_k_m", None),
    ("Q2_K", "q2_k", None),
    ("Q3_K_S", "q3_k_s", None),
    ("Q5_K_M", "q5_k_m", None),
    ("Q6_K", "q6_k", None),
    ("Q4_0", "q4_0", Some(4.5)),
    ("Q4_1", "q4_1", Some(5.0)),
    ("Q5_0", "q5_0", Some(5.5)),
];

/// Seed of the rotation of the float model.
const ROTATION_SEED: u64 = 0;

/// The records of the two float models: the dequantized GGUF and its rotation (the one
/// every file is made from).
const FLOAT_DEQUANTIZED: &str = "float-dequantized";
const FLOAT: &str = "float-rotated";

/// Calibration windows of 2048 tokens (Wikipedia excerpt) and evaluation chunks.
const CALIBRATION: &str = "32";
const EVAL_CHUNKS: &str = "40";

/// Where the GGUF section of `docs/results.md` starts.
pub const SECTION_MARKER: &str = "<!-- cargo xtask bench --gguf -->";

/// Where the records are kept, from the repository root.
const RECORDS: &str = "docs/bench/gguf";

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
        id: "magr-auto-optq",
        label: "magr MagR (alpha auto)+OPTQ",
    },
];

/// The magr flags of a row (none for llama.cpp's rows).
fn magr_flags(row: &str) -> &'static [&'static str] {
    match row {
        "rtn" => &["--method", "rtn", "--no-magr"],
        "optq" => &["--method", "optq", "--no-magr"],
        "magr-auto-optq" => &["--method", "optq", "--alpha", "auto"],
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

/// A measured file: both perplexities, its size, and the seconds it took to make (the
/// quantizer's alone; 0 for the float models).
#[derive(Serialize, Deserialize)]
struct GgufCell {
    llama_ppl: f64,
    magr_ppl: f64,
    bytes: u64,
    make_seconds: f64,
}

/// The inputs every record was measured with, by sha256: a new machine that makes them
/// again must get the same bytes, or the bench stops (`--fresh` measures everything again).
#[derive(Serialize, Deserialize, PartialEq)]
struct Inputs256 {
    rotated_model: String,
    imatrix: String,
}

/// Makes `path` by `make(partial)` when it is not there, then renames the partial file.
fn made(path: PathBuf, make: impl FnOnce(&Path) -> Result<(), String>) -> Result<PathBuf, String> {
    if !path.exists() {
        let ext = path
            .extension()
            .map_or(String::new(), |e| e.to_string_lossy().into_owned());
        let partial = path.with_extension(format!("partial.{ext}"));
        make(&partial)?;
        std::fs::rename(&partial, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// The hex sha256 of a file.
fn sha256(path: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Runs every cell not yet recorded (all with `fresh`), rewriting the section after each.
pub fn run(i: &Inputs<'_>, fresh: bool) -> Result<(), String> {
    let dir = i.root.join("target/bench/gguf");
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let records = Records::open(&i.root.join(RECORDS), fresh)?;
    let commit = commit(i.root);

    // The float models, the importance matrix and the joined evaluation text, once.
    let dequantized = made(dir.join("F32.gguf"), |partial| {
        let args = [
            "--allow-requantize",
            path_str(i.model)?,
            path_str(partial)?,
            "F32",
        ];
        output(&tool(i, "llama-quantize"), &args).map(drop)
    })?;
    let rotated = made(dir.join("rotated.gguf"), |partial| {
        // One thread: the same bytes on any machine.
        let seed = ROTATION_SEED.to_string();
        let args = [
            "rotate",
            "--quiet",
            "--model",
            path_str(&dequantized)?,
            "--seed",
            &seed,
            "--threads",
            "1",
            "--force",
            "--out",
            path_str(partial)?,
        ];
        run_cell(i.magr, &args)
    })?;
    let imatrix = made(dir.join("imatrix.dat"), |partial| {
        let args = [
            "-m",
            path_str(&rotated)?,
            "-f",
            path_str(i.calibration)?,
            "-c",
            "2048",
            "--chunks",
            CALIBRATION,
            "-t",
            "2",
            "-o",
            path_str(partial)?,
            "--output-format",
            "dat",
        ];
        output(&tool(i, "llama-imatrix"), &args).map(drop)
    })?;
    let inputs = Inputs256 {
        rotated_model: sha256(&rotated)?,
        imatrix: sha256(&imatrix)?,
    };
    match records.get::<Inputs256>("inputs")? {
        None => records.put(
            "inputs",
            &Record::now(&commit, 0.0, Outcome::Measured(inputs)),
        )?,
        Some(r) if r.measured() == Some(&inputs) => {}
        Some(_) => {
            return Err(format!(
                "{} or {} differs from the files the recorded cells were measured with \
                 (docs/bench/gguf/inputs.json); `bench --gguf --fresh` measures every cell again",
                rotated.display(),
                imatrix.display()
            ));
        }
    }
    let joined = made(dir.join("wiki.test.joined.txt"), |partial| {
        let text = std::fs::read_to_string(i.wikitext)
            .map_err(|e| format!("{}: {e}", i.wikitext.display()))?;
        std::fs::write(partial, text.lines().collect::<Vec<_>>().join("\n\n"))
            .map_err(|e| format!("{}: {e}", partial.display()))
    })?;
    write_section(&records, i.results)?;

    let mut jobs = vec![
        (FLOAT_DEQUANTIZED.to_string(), Job::Float(&dequantized)),
        (FLOAT.to_string(), Job::Float(&rotated)),
    ];
    for (llama_type, magr_type, bpw) in TYPES {
        for row in &ROWS {
            let format = (llama_type, magr_type, bpw.is_some());
            let id = format!("{}-{magr_type}", row.id);
            jobs.push((
                id,
                Job::Quantize {
                    row: row.id,
                    format,
                },
            ));
        }
    }
    for (id, job) in jobs {
        if records.get::<GgufCell>(&id)?.is_some() {
            continue;
        }
        let cell = dir.join(&id);
        std::fs::create_dir_all(&cell).map_err(|e| format!("{}: {e}", cell.display()))?;
        let start = Instant::now();
        // One failing cell does not stop the bench: the failure is recorded and shown.
        let result = match job {
            Job::Float(model) => perplexities(i, model, &cell, &joined).and_then(|ppl| {
                Ok(GgufCell {
                    llama_ppl: ppl.0,
                    magr_ppl: ppl.1,
                    bytes: file_bytes(model)?,
                    make_seconds: 0.0,
                })
            }),
            Job::Quantize { row, format } => {
                measure(i, (&rotated, &imatrix), &cell, row, format, &joined)
            }
        };
        let outcome = match result {
            Ok(c) => Outcome::Measured(c),
            Err(e) => {
                eprintln!("xtask: {e}");
                Outcome::Failed(e)
            }
        };
        records.put(
            &id,
            &Record::now(&commit, start.elapsed().as_secs_f64(), outcome),
        )?;
        write_section(&records, i.results)?;
    }
    eprintln!("xtask: wrote the GGUF section of {}", i.results.display());
    Ok(())
}

/// What a cell measures: a float model as it is, or a file made from the rotated model by
/// a row's quantizer in a format (`(llama.cpp's name, magr's, whether --pure)`).
enum Job<'a> {
    Float(&'a Path),
    Quantize {
        row: &'static str,
        format: (&'static str, &'static str, bool),
    },
}

fn file_bytes(path: &Path) -> Result<u64, String> {
    Ok(std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len())
}

/// One cell: makes the file from the rotated float model (timed), then both
/// perplexities. `format` is llama.cpp's name, magr's, and whether llama.cpp is told
/// `--pure` (a legacy format).
fn measure(
    i: &Inputs<'_>,
    (rotated, imatrix): (&Path, &Path),
    cell: &Path,
    row: &str,
    (llama_type, magr_type, pure): (&str, &str, bool),
    joined: &Path,
) -> Result<GgufCell, String> {
    let start = Instant::now();
    let (gguf, make_seconds) = match row {
        "llama" | "llama-imatrix" => {
            let file = cell.join(format!("{llama_type}.gguf"));
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
                args.extend(["--imatrix", path_str(imatrix)?]);
            }
            args.extend([path_str(rotated)?, path_str(&file)?, llama_type]);
            output(&tool(i, "llama-quantize"), &args)?;
            (file, start.elapsed().as_secs_f64())
        }
        _ => {
            let out = cell.join("out");
            let mut args = vec![
                "quantize",
                "--quiet",
                "--model",
                path_str(rotated)?,
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
            let report_path = out.join("report.json");
            let report = read_typed::<RunReport>(&report_path)?
                .ok_or_else(|| format!("{} is missing", report_path.display()))?;
            (out.join("gguf/model.gguf"), report.seconds_total)
        }
    };
    let (llama_ppl, magr_ppl) = perplexities(i, &gguf, cell, joined)?;
    Ok(GgufCell {
        llama_ppl,
        magr_ppl,
        bytes: file_bytes(&gguf)?,
        make_seconds,
    })
}

/// llama.cpp's and magr's perplexity of the file `gguf` (logs and `eval.json` in `cell`).
fn perplexities(
    i: &Inputs<'_>,
    gguf: &Path,
    cell: &Path,
    joined: &Path,
) -> Result<(f64, f64), String> {
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
    std::fs::write(cell.join("llama-perplexity.log"), &llama).map_err(|e| e.to_string())?;
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
    let magr =
        read_typed::<Evaluation>(&eval)?.ok_or_else(|| format!("{} is missing", eval.display()))?;
    Ok((llama_ppl(&llama)?, magr.ppl))
}

/// Rewrites the section from the records in `root`'s `docs/bench/gguf/`, measuring
/// nothing.
pub fn write_tables(root: &Path, results: &Path) -> Result<(), String> {
    write_section(&Records::open(&root.join(RECORDS), false)?, results)
}

/// Rewrites the GGUF section of `results` from the records, keeping the other sections.
fn write_section(records: &Records, results: &Path) -> Result<(), String> {
    let mut machines = Machines::default();
    let rows = table_rows(records, &mut machines)?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{SECTION_MARKER}\n\n## GGUF: magr against llama.cpp, on SmolLM2 rotated\n"
    );
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench --gguf`. Float model: SmolLM2-135M-Instruct, its GGUF's \
         Q4_1 weights dequantized to F32 (`llama-quantize --allow-requantize ... F32`), then \
         `magr rotate --seed {ROTATION_SEED}`: the RMSNorm gains folded into the layers that \
         read them and the residual stream rotated by a random orthogonal 576 x 576 matrix, \
         the same function with weights that lie on no grid (the dequantized weights lie on \
         Q4_1's, which made 32-input block formats near-degenerate: the next section). Every \
         file below is made from the rotated model. A K-quant preset's file has the preset's \
         per-layer types on both sides (on this model every 576-wide layer falls back to a \
         legacy type: only `ffn_down` holds K-quants); a legacy format's file has every \
         linear layer in the format (`--pure` for llama-quantize); token embedding and output \
         in F32 on every side. llama.cpp's importance matrix: `llama-imatrix -c 2048 --chunks \
         {CALIBRATION}` on the Wikipedia excerpt (its first {CALIBRATION} chunks of 2048 \
         tokens); magr's calibration: {CALIBRATION} windows of 2048 tokens of the same text, \
         seed 0. magr: block parameters by the diag(H)-weighted search (`--grid-fit \
         weighted`, the default); MagR by FISTA (the default) with its alpha chosen per \
         layer on held-out calibration windows (`--alpha auto`: 0, 1/2, 1, 2, 4, 8 or 16 \
         times the per-group reference 1e-4, whichever gives the smallest layer loss after \
         OPTQ on every 4th window when fitted on the others; 0 is OPTQ alone). Perplexity of \
         every file by `llama-perplexity -c 2048 --chunks {EVAL_CHUNKS}` (scores the second half of each chunk) and by `magr eval` (first \
         {EVAL_CHUNKS} windows of 2048, every token) on WikiText-2 test, lines joined by a \
         blank line. llama.cpp built by `cargo xtask llama-cpp` (llama.cpp vendored in \
         llama-cpp-python 0.3.36, AVX2). Machines (the last column names each row's): {}.\n",
        machines.legend()
    );
    let float = |id: &str| -> Result<String, String> {
        Ok(match records.get::<GgufCell>(id)? {
            Some(r) => match r.measured() {
                Some(c) => format!(
                    "llama.cpp ppl **{:.2}**, magr eval ppl **{:.2}**",
                    c.llama_ppl, c.magr_ppl
                ),
                None => format!("failed (docs/bench/gguf/{id}.json)"),
            },
            None => "…".into(),
        })
    };
    let _ = writeln!(
        md,
        "The float models: dequantized {}; rotated (every row starts from it) {}.\n",
        float(FLOAT_DEQUANTIZED)?,
        float(FLOAT)?
    );
    let _ = writeln!(
        md,
        "| format | method | llama.cpp ppl | magr eval ppl | ratio to llama.cpp + imatrix | file MB | bits/weight (linear) | quantization s | commit, machine |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    md.push_str(&rows);
    let _ = writeln!(
        md,
        "\nCommands: `cargo xtask bench --gguf` (continues from the records in \
         `docs/bench/gguf/`; `--gguf --fresh` measures again). Files and logs stay in \
         `target/bench/gguf/`."
    );
    crate::results::write_section(results, Some(SECTION_MARKER), &md)
}

/// The rows of the GGUF table, one per format and method, lettering the machines that
/// measured them in `machines`.
fn table_rows(records: &Records, machines: &mut Machines) -> Result<String, String> {
    let mut md = String::new();
    for (llama_type, magr_type, bpw) in TYPES {
        let imatrix = records.get::<GgufCell>(&format!("llama-imatrix-{magr_type}"))?;
        let imatrix_ppl = imatrix
            .as_ref()
            .and_then(Record::measured)
            .map(|c| c.llama_ppl);
        for row in &ROWS {
            let id = format!("{}-{magr_type}", row.id);
            let record = records.get::<GgufCell>(&id)?;
            let Some((r, c)) = record.as_ref().and_then(|r| Some((r, r.measured()?))) else {
                let state = match record {
                    Some(_) => format!("failed (docs/bench/gguf/{id}.json)"),
                    None => "…".into(),
                };
                let _ = writeln!(md, "| {llama_type} | {} | {state} | | | | | | |", row.label);
                continue;
            };
            let ratio = imatrix_ppl.map_or("-".to_string(), |b| format!("{:.3}", c.llama_ppl / b));
            let bpw = bpw.map_or("mixture".to_string(), |b| b.to_string());
            let _ = writeln!(
                md,
                "| {llama_type} | {} | {:.2} | {:.2} | {ratio} | {:.1} | {bpw} | {:.0} | `{}`, {} |",
                row.label,
                c.llama_ppl,
                c.magr_ppl,
                c.bytes as f64 / 1e6,
                c.make_seconds,
                r.commit,
                machines.letter(&r.machine),
            );
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_written_from_the_records_alone() {
        let dir = std::env::temp_dir().join(format!("xtask-gguf-{}", std::process::id()));
        let records = Records::open(&dir.join("records"), true).unwrap();
        let cell = |llama_ppl, magr_ppl| {
            Outcome::Measured(GgufCell {
                llama_ppl,
                magr_ppl,
                bytes: 188_600_000,
                make_seconds: 450.4,
            })
        };
        let put = |id: &str, outcome| records.put(id, &Record::now("abc", 1.0, outcome)).unwrap();
        put(FLOAT, cell(18.80, 20.80));
        put("llama-imatrix-q4_k_m", cell(20.0, 22.0));
        put("magr-auto-optq-q4_k_m", cell(19.0, 21.0));
        put("optq-q4_k_m", Outcome::Failed("boom".into()));
        let results = dir.join("results.md");
        write_section(&records, &results).unwrap();
        let md = std::fs::read_to_string(&results).unwrap();
        assert!(
            md.contains("dequantized …; rotated (every row starts from it) llama.cpp ppl **18.80**, magr eval ppl **20.80**"),
            "{md}"
        );
        assert!(
            md.contains("| Q4_K_M | magr MagR (alpha auto)+OPTQ | 19.00 | 21.00 | 0.950 | 188.6 | mixture | 450 | `abc`, A |"),
            "{md}"
        );
        assert!(
            md.contains("| Q4_K_M | magr OPTQ | failed (docs/bench/gguf/optq-q4_k_m.json) |"),
            "{md}"
        );
        assert!(md.contains("| Q6_K | magr RTN | … |"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
