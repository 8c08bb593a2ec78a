//! `cargo xtask bench --seeds`: the main comparisons over three calibration seeds, with
//! a second evaluation domain, into their own section of `docs/results.md`.
//!
//! Every (method, grid, seed) cell is one `magr quantize` run (fake-quant written, then
//! evaluated by `magr eval` on the Lee news corpus, which calibration never sees) in
//! `target/bench/seeds/<cell>/`, its numbers recorded in `docs/bench/seeds/<cell>.json`
//! ([`crate::records`]: committed, so the bench continues on another machine); an
//! interrupted bench continues, and the section is rewritten after every cell. The table shows mean ± sample standard deviation over the
//! seeds measured; a method beats another at a grid only when the means differ by more
//! than the sum of the two standard deviations.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use magr_report::{Evaluation, RunReport};
use serde::{Deserialize, Serialize};

use crate::records::{Machines, Outcome, Record, Records};
use crate::table::{
    CALIBRATION, EVAL_WINDOWS, Grid, Method, OPTQ, RTN, W3, W4, commit, machine, path_str,
    quantize_args, read_typed, run_cell,
};

/// The section's marker in `docs/results.md`.
pub const SECTION_MARKER: &str = "<!-- cargo xtask bench --seeds -->";

/// Where the records are kept, from the repository root.
const RECORDS: &str = "docs/bench/seeds";

/// Calibration seeds of every cell.
const SEEDS: [u64; 3] = [0, 1, 2];

/// The seeds a method runs: all of them, except for RTN without MagR, which reads no
/// calibration data (its weights are the same for every seed: the `cli` test
/// `rtn_without_magr_does_not_depend_on_the_calibration_seed`), so it runs once, with
/// seed 0, and has no spread.
fn seeds_of(m: &Method) -> &'static [u64] {
    if m.id == RTN.id { &SEEDS[..1] } else { &SEEDS }
}

/// The grids: groups of 128, the usual setting, leave a shorter last group in
/// SmolLM2's 576-wide rows.
const GRIDS: [Grid; 4] = [
    W4,
    W3,
    Grid {
        label: "w3 g128",
        id: "w3g128",
        args: &["--bits", "3", "--group-size", "128", "--beta", "0.95"],
    },
    Grid {
        label: "w2 g128",
        id: "w2g128",
        args: &["--bits", "2", "--group-size", "128", "--beta", "0.95"],
    },
];

/// The rows, labelled as in the main table (the library's labels, then the note). MagR
/// rows use the default solver (FISTA, at most 40 iterations) except the one that shows
/// the reference's 200 plain iterations beside it.
const METHODS: [Method; 6] = [
    RTN,
    Method {
        id: "magr-rtn",
        note: "",
        args: &["--method", "rtn"],
    },
    OPTQ,
    Method {
        id: "magr-optq",
        note: "",
        args: &["--method", "optq"],
    },
    Method {
        id: "magr-plain-optq",
        note: ", MagR by 200 plain iterations (the reference)",
        args: &["--method", "optq", "--magr-solver", "plain"],
    },
    Method {
        id: "magr-optq-cd",
        note: " (30 CD sweeps)",
        args: &["--method", "optq-cd", "--sweeps", "30"],
    },
];

/// Index of OPTQ, MagR+OPTQ, MagR+OPTQ by plain iterations and MagR+OPTQ† in [`METHODS`].
const OPTQ_ROW: usize = 2;
const MAGR_OPTQ_ROW: usize = 3;
const PLAIN_ROW: usize = 4;
const DAGGER_ROW: usize = 5;

/// The (baseline, row) pairs whose gain the table states: MagR+OPTQ and MagR+OPTQ†
/// over OPTQ (the target), and FISTA's MagR over the reference's 200 plain
/// iterations (which should be within the spread).
const COMPARISONS: [(usize, usize); 3] = [
    (OPTQ_ROW, MAGR_OPTQ_ROW),
    (OPTQ_ROW, DAGGER_ROW),
    (PLAIN_ROW, MAGR_OPTQ_ROW),
];

/// The rows of the target, which run first: OPTQ against MagR+OPTQ and
/// MagR+OPTQ†.
const TARGET_ROWS: [usize; 3] = [OPTQ_ROW, MAGR_OPTQ_ROW, DAGGER_ROW];

/// The cells in the order they run: the [`TARGET_ROWS`] at every grid and seed first,
/// then the rest seed by seed.
fn cell_order() -> Vec<(usize, usize, u64)> {
    let mut order = Vec::new();
    for seed in SEEDS {
        for m in TARGET_ROWS {
            order.extend((0..GRIDS.len()).map(|g| (m, g, seed)));
        }
    }
    for seed in SEEDS {
        for m in (0..METHODS.len()).filter(|&m| seeds_of(&METHODS[m]).contains(&seed)) {
            for g in 0..GRIDS.len() {
                if !order.contains(&(m, g, seed)) {
                    order.push((m, g, seed));
                }
            }
        }
    }
    order
}

/// The inputs of the bench.
pub struct Inputs<'a> {
    /// The repository root.
    pub root: &'a Path,
    /// The `magr` binary built for the bench.
    pub built: &'a Path,
    /// The second evaluation text (the Lee news corpus).
    pub lee: &'a Path,
    /// `docs/results.md`.
    pub results: &'a Path,
}

/// What a cell's record keeps: the library's label of the run and both perplexities.
#[derive(Serialize, Deserialize)]
struct SeedCell {
    label: String,
    wikitext_ppl: f64,
    lee_ppl: f64,
}

fn cell_id(m: &Method, g: &Grid, seed: u64) -> String {
    format!("{}-{}-s{seed}", m.id, g.id)
}

/// Runs every cell not yet recorded (all of them with `fresh`), rewriting the section
/// after each.
pub fn run(i: &Inputs<'_>, fresh: bool) -> Result<(), String> {
    let dir = i.root.join("target/bench/seeds");
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let records = Records::open(&i.root.join(RECORDS), fresh)?;
    // A copy, so that rebuilding during the bench does not change what it measures.
    let magr = dir.join("magr");
    std::fs::copy(i.built, &magr).map_err(|e| format!("copying {}: {e}", i.built.display()))?;
    let commit = commit(i.root);
    let machine = machine();
    eprintln!("xtask: seeds bench on {machine}, commit {commit}");
    write_results(&records, i.results)?;
    for (m, g, seed) in cell_order() {
        let id = cell_id(&METHODS[m], &GRIDS[g], seed);
        if records.get::<SeedCell>(&id)?.is_some() {
            continue;
        }
        let start = Instant::now();
        // One failing cell does not stop the bench: the failure is recorded and shown.
        let outcome = match measure(&magr, &dir.join(&id), &METHODS[m], &GRIDS[g], seed, i.lee) {
            Ok(cell) => Outcome::Measured(cell),
            Err(e) => {
                eprintln!("xtask: {e}");
                Outcome::Failed(e)
            }
        };
        let record = Record::now(&commit, start.elapsed().as_secs_f64(), outcome);
        records.put(&id, &record)?;
        write_results(&records, i.results)?;
    }
    eprintln!("xtask: wrote {}", i.results.display());
    Ok(())
}

/// Rewrites the section from the records in `root`'s `docs/bench/seeds/`, measuring
/// nothing.
pub fn write_tables(root: &Path, results: &Path) -> Result<(), String> {
    write_results(&Records::open(&root.join(RECORDS), false)?, results)
}

/// One cell: quantize (WikiText-2 evaluated by the run itself, the fake-quant model
/// written), evaluate the fake-quant model on the Lee corpus; both reports stay in `cell`.
fn measure(
    magr: &Path,
    cell: &Path,
    method: &Method,
    grid: &Grid,
    seed: u64,
    lee: &Path,
) -> Result<SeedCell, String> {
    std::fs::create_dir_all(cell).map_err(|e| format!("{}: {e}", cell.display()))?;
    let out = cell.join("out");
    let seed = seed.to_string();
    let mut args = quantize_args(&seed, "fake-quant", path_str(&out)?);
    args.extend(method.args);
    args.extend(grid.args);
    run_cell(magr, &args)?;
    std::fs::rename(out.join("report.json"), cell.join("report.json"))
        .map_err(|e| format!("{}: {e}", cell.display()))?;
    let model = out.join("fake-quant");
    let report = cell.join("lee.json");
    run_cell(
        magr,
        &[
            "eval",
            "--quiet",
            "--model",
            path_str(&model)?,
            "--eval-text",
            path_str(lee)?,
            "--eval-windows",
            "1000",
            "--report",
            path_str(&report)?,
        ],
    )?;
    std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let missing = |path: &Path| format!("{} is missing", path.display());
    let run_path = cell.join("report.json");
    let run = read_typed::<RunReport>(&run_path)?.ok_or_else(|| missing(&run_path))?;
    let lee = read_typed::<Evaluation>(&report)?.ok_or_else(|| missing(&report))?;
    let wikitext = run
        .quantized
        .as_ref()
        .ok_or_else(|| format!("{}: the run evaluated nothing", run_path.display()))?;
    Ok(SeedCell {
        label: format!("{}{}", run.settings.method_label(), method.note),
        wikitext_ppl: wikitext.ppl,
        lee_ppl: lee.ppl,
    })
}

/// Mean and sample standard deviation (0 for one value); `None` for none.
fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (!values.is_empty()).then(|| (mean, var.sqrt()))
}

/// `mean ± std (n of runs)` of a cell's perplexities over the `runs` seeds its method
/// runs, `…` when none is measured; one seed has no spread to show.
fn cell_text(values: &[f64], runs: usize) -> String {
    match mean_std(values) {
        None => "…".into(),
        Some((mean, _)) if runs == 1 => format!("{mean:.2}"),
        Some((mean, std)) if values.len() == runs => format!("{mean:.2} ± {std:.2}"),
        Some((mean, _)) if values.len() == 1 => format!("{mean:.2} (1 of {runs} seeds)"),
        Some((mean, std)) => format!("{mean:.2} ± {std:.2} ({} of {runs} seeds)", values.len()),
    }
}

/// The perplexities of every seed measured: WikiText-2 (from the run's report) and Lee;
/// the library's label of the row (from any measured seed).
struct Cell {
    label: Option<String>,
    wikitext: Vec<f64>,
    lee: Vec<f64>,
    /// The machine and wall seconds of every seed measured.
    runs: Vec<(String, f64)>,
    failed: usize,
}

fn read_cell(records: &Records, m: &Method, g: &Grid) -> Result<Cell, String> {
    let mut cell = Cell {
        label: None,
        wikitext: Vec::new(),
        lee: Vec::new(),
        runs: Vec::new(),
        failed: 0,
    };
    for &seed in seeds_of(m) {
        let Some(record) = records.get::<SeedCell>(&cell_id(m, g, seed))? else {
            continue;
        };
        match record.outcome {
            Outcome::Measured(c) => {
                cell.wikitext.push(c.wikitext_ppl);
                cell.lee.push(c.lee_ppl);
                cell.label = Some(c.label);
                cell.runs.push((record.machine, record.seconds));
            }
            Outcome::Failed(_) => cell.failed += 1,
        }
    }
    Ok(cell)
}

/// MagR+OPTQ against OPTQ at a grid: the relative gain of the means and whether it is a
/// win (the means differ by more than the two standard deviations together).
fn verdict(optq: &[f64], magr: &[f64]) -> String {
    match (mean_std(optq), mean_std(magr)) {
        (Some((a, sa)), Some((b, sb))) if optq.len() > 1 && magr.len() > 1 => {
            let gain = (a - b) / a * 100.0;
            let call = if (a - b).abs() <= sa + sb {
                "within the spread"
            } else if b < a {
                "win"
            } else {
                "loss"
            };
            format!("{gain:+.1}% ({call})")
        }
        _ => "…".into(),
    }
}

/// The wall seconds of a cell: the mean over its seeds on each machine that measured
/// some, with the machine's letter when the table has more than one.
fn seconds_text(runs: &[(char, f64)], several: bool) -> String {
    let mut texts = Vec::new();
    let mut seen = Vec::new();
    for &(letter, _) in runs {
        if seen.contains(&letter) {
            continue;
        }
        seen.push(letter);
        let on: Vec<f64> = (runs.iter())
            .filter(|(l, _)| *l == letter)
            .map(|(_, s)| *s)
            .collect();
        let mean = on.iter().sum::<f64>() / on.len() as f64;
        texts.push(if several {
            format!("{mean:.0} ({letter})")
        } else {
            format!("{mean:.0}")
        });
    }
    if texts.is_empty() {
        "…".into()
    } else {
        texts.join(", ")
    }
}

fn write_results(records: &Records, results: &Path) -> Result<(), String> {
    let mut cells = Vec::new();
    for m in &METHODS {
        let row: Result<Vec<Cell>, String> =
            GRIDS.iter().map(|g| read_cell(records, m, g)).collect();
        cells.push(row?);
    }
    let mut machines = Machines::default();
    let lettered: Vec<Vec<Vec<(char, f64)>>> = (cells.iter())
        .map(|row| {
            (row.iter())
                .map(|c| {
                    c.runs
                        .iter()
                        .map(|(m, s)| (machines.letter(m), *s))
                        .collect()
                })
                .collect()
        })
        .collect();
    let several = machines.count() > 1;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{SECTION_MARKER}\n\n## Over calibration seeds, on two text domains\n"
    );
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench --seeds`; cells measured on {}. Each cell: `magr quantize \
         --nsamples {CALIBRATION} --seqlen 2048 --seed S --eval-windows {EVAL_WINDOWS}` with \
         the row's and the column's flags, for seeds {SEEDS:?} of the calibration sampler \
         (Wikipedia excerpt); perplexity on the first {EVAL_WINDOWS} windows of 2048 tokens of \
         WikiText-2 test and, by `magr eval` on the fake-quant model, on every window of 2048 \
         tokens of the Lee news corpus (`calibration/lee_background.cor`, never used for \
         calibration). Mean ± sample standard deviation over the seeds; groups of 128 \
         (SmolLM2's 576-wide rows end in a group of 64), grid shrink 0.95 with groups. MagR \
         runs FISTA (`magr quantize`'s default, at most 40 iterations) except in the row that \
         names the reference's 200 plain iterations. RTN alone reads no calibration data (its \
         weights are the same for every seed, which a `magr-cli` test checks): it runs once, \
         with seed 0, and has no spread.\n",
        machines.legend()
    );
    let mut head = String::from("| method |");
    let mut rule = String::from("|---|");
    for g in &GRIDS {
        let _ = write!(head, " {} WikiText-2 | {} Lee |", g.label, g.label);
        rule.push_str("---|---|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    let labels: Vec<String> = METHODS
        .iter()
        .zip(&cells)
        .map(|(m, row)| {
            row.iter()
                .find_map(|c| c.label.clone())
                .unwrap_or_else(|| format!("{} (not measured yet)", m.id))
        })
        .collect();
    for ((label, row), m) in labels.iter().zip(&cells).zip(&METHODS) {
        let runs = seeds_of(m).len();
        let mut line = format!("| {label} |");
        for c in row {
            let failed = if c.failed > 0 {
                format!(" ({} failed)", c.failed)
            } else {
                String::new()
            };
            let _ = write!(
                line,
                " {}{failed} | {} |",
                cell_text(&c.wikitext, runs),
                cell_text(&c.lee, runs)
            );
        }
        let _ = writeln!(md, "{line}");
    }
    for (base, row) in COMPARISONS {
        let mut line = format!("| {}'s gain over {} |", labels[row], labels[base]);
        for (b, r) in cells[base].iter().zip(&cells[row]) {
            let _ = write!(
                line,
                " {} | {} |",
                verdict(&b.wikitext, &r.wikitext),
                verdict(&b.lee, &r.lee)
            );
        }
        let _ = writeln!(md, "{line}");
    }
    let on = if several { ", on each machine" } else { "" };
    let _ = writeln!(
        md,
        "\nWall seconds per cell (mean over the seeds measured{on}):\n"
    );
    let _ = writeln!(md, "| method | {} |", GRIDS.map(|g| g.label).join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(GRIDS.len()));
    for (label, row) in labels.iter().zip(&lettered) {
        let mut line = format!("| {label} |");
        for runs in row {
            let _ = write!(line, " {} |", seconds_text(runs, several));
        }
        let _ = writeln!(md, "{line}");
    }
    crate::results::write_section(results, Some(SECTION_MARKER), &md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_verdicts() {
        let (mean, std) = mean_std(&[1.0, 2.0, 3.0]).unwrap();
        assert!((mean - 2.0).abs() < 1e-12 && (std - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[5.0]), Some((5.0, 0.0)));
        // 10 +- 1 against 8 +- 0.5: 2 > 1.5, a win of 20%.
        assert_eq!(
            verdict(&[9.0, 10.0, 11.0], &[7.5, 8.0, 8.5]),
            "+20.0% (win)"
        );
        assert_eq!(
            verdict(&[9.0, 10.0, 11.0], &[8.0, 9.0, 10.0]),
            "+10.0% (within the spread)"
        );
        assert_eq!(verdict(&[1.0, 1.1], &[2.0, 2.1]), "-95.2% (loss)");
        assert_eq!(verdict(&[1.0], &[2.0, 2.1]), "…");
        assert_eq!(cell_text(&[1.0, 2.0, 3.0], 3), "2.00 ± 1.00");
        assert_eq!(cell_text(&[2.0], 3), "2.00 (1 of 3 seeds)");
        assert_eq!(cell_text(&[2.0], 1), "2.00");
        assert_eq!(cell_text(&[], 1), "…");
        let runs = [('A', 10.0), ('B', 30.0), ('A', 20.0)];
        assert_eq!(seconds_text(&runs, true), "15 (A), 30 (B)");
        assert_eq!(seconds_text(&runs[..1], false), "10");
        assert_eq!(seconds_text(&[], true), "…");
    }

    #[test]
    fn the_section_is_written_from_the_records_alone() {
        let dir = std::env::temp_dir().join(format!("xtask-seeds-{}", std::process::id()));
        let records = Records::open(&dir.join("records"), true).unwrap();
        let measured = |wikitext_ppl, lee_ppl| {
            Outcome::Measured(SeedCell {
                label: "OPTQ".into(),
                wikitext_ppl,
                lee_ppl,
            })
        };
        let optq_w4 = |seed| cell_id(&METHODS[OPTQ_ROW], &GRIDS[0], seed);
        records
            .put(&optq_w4(0), &Record::now("c", 10.0, measured(9.0, 19.0)))
            .unwrap();
        records
            .put(&optq_w4(1), &Record::now("c", 20.0, measured(11.0, 21.0)))
            .unwrap();
        let failed = Record::<SeedCell>::now("c", 1.0, Outcome::Failed("boom".into()));
        records.put(&optq_w4(2), &failed).unwrap();
        let rtn = Outcome::Measured(SeedCell {
            label: "RTN".into(),
            wikitext_ppl: 12.0,
            lee_ppl: 13.0,
        });
        let rtn_w4 = cell_id(&RTN, &GRIDS[0], 0);
        records.put(&rtn_w4, &Record::now("c", 5.0, rtn)).unwrap();
        let results = dir.join("results.md");
        write_results(&records, &results).unwrap();
        let md = std::fs::read_to_string(&results).unwrap();
        assert!(md.contains("| RTN | 12.00 | 13.00 | … |"), "{md}");
        assert_eq!(md.matches("'s gain over OPTQ |").count(), 2, "{md}");
        assert_eq!(
            md.matches("'s gain over ").count(),
            COMPARISONS.len(),
            "{md}"
        );
        let row = md.lines().find(|l| l.starts_with("| OPTQ |")).unwrap();
        assert!(
            row.starts_with("| OPTQ | 10.00 ± 1.41 (2 of 3 seeds) (1 failed) | 20.00 ± 1.41 (2 of 3 seeds) | … |"),
            "{row}"
        );
        assert!(md.contains("| OPTQ | 15 | … |"), "{md}");
        let here = machine();
        assert!(
            md.contains(&format!("cells measured on A: {here} (3 cells).")),
            "{md}"
        );

        // A cell measured on another machine: wall seconds are shown per machine.
        let elsewhere = Record {
            machine: "another machine".into(),
            ..Record::now("c", 30.0, measured(12.0, 22.0))
        };
        let optq_w3 = cell_id(&METHODS[OPTQ_ROW], &GRIDS[1], 0);
        records.put(&optq_w3, &elsewhere).unwrap();
        write_results(&records, &results).unwrap();
        let md = std::fs::read_to_string(&results).unwrap();
        assert!(md.contains("| OPTQ | 15 (A) | 30 (B) | … |"), "{md}");
        assert!(md.contains("| RTN | 5 (A) | … |"), "{md}");
        let legend = format!("A: {here} (3 cells); B: another machine (1 cell).");
        assert!(md.contains(&legend), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_target_comparison_runs_first_and_every_cell_once() {
        let order = cell_order();
        let runs: usize = METHODS.iter().map(|m| seeds_of(m).len()).sum();
        assert_eq!(order.len(), runs * GRIDS.len());
        let rtn = |&&(m, _, _): &&(usize, usize, u64)| METHODS[m].id == RTN.id;
        assert_eq!(order.iter().filter(rtn).count(), GRIDS.len());
        assert!(order.iter().filter(rtn).all(|&(_, _, seed)| seed == 0));
        let first: Vec<usize> = order[..TARGET_ROWS.len() * GRIDS.len() * SEEDS.len()]
            .iter()
            .map(|c| c.0)
            .collect();
        assert!(first.iter().all(|m| TARGET_ROWS.contains(m)));
        let mut unique = order.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), order.len());
    }
}
