//! `cargo xtask bench --scale [--nsamples N] [--no-magr] [--hidden-store S]`: time and
//! memory of MagR+OPTQ on a
//! 7B-shaped model, into its own section of `docs/results.md`.
//!
//! `magr gen-model --shape llama-7b --blocks 2` writes the model once (LLaMA-2-7B's
//! widths, embedding and head; the first 2 of its 32 blocks; random f16 weights) under
//! `target/bench/scale/`; `magr quantize` runs MagR+OPTQ at 4 bits per channel on N
//! windows of 2048 tokens (default 128, the paper's) with the fake-quant and GPTQ outputs,
//! under a Python wrapper that reads the process's peak resident memory from the kernel
//! (`getrusage(RUSAGE_CHILDREN).ru_maxrss`). The table gives seconds per block per stage
//! and their extrapolation to 32 blocks. The weights stay in their files and finished
//! blocks leave the memory, packed layers included (they are left in the checkpoint), so
//! the peak is one block in f32, the calibration hidden states and the `H` matrices
//! whatever the number of blocks.
//!
//! An interrupted bench continues from the run's checkpoint (`magr quantize --resume`):
//! the seconds are then the whole run's (the checkpoint carries the finished blocks'),
//! the peak memory is that of the process that finished the run, and the section says so.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use magr_report::RunReport;

use crate::table::{commit, machine, path_str, read_typed};

/// The section's marker in `docs/results.md`.
pub const SECTION_MARKER: &str = "<!-- cargo xtask bench --scale -->";

/// Blocks generated and quantized, and the blocks of the full shape.
const BLOCKS: usize = 2;
const FULL_BLOCKS: usize = 32;

/// Runs `program args` and returns the peak resident memory of the child in bytes.
const PEAK_RSS: &str = "import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], 'w') as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(code)";

/// What `bench --scale` runs.
pub struct Options {
    /// Calibration windows of 2048 tokens.
    pub nsamples: usize,
    /// MagR before OPTQ (off: OPTQ alone, for a quick memory figure on a small machine).
    pub magr: bool,
    /// `magr quantize --hidden-store` (`auto`, `memory`, `disk`), when given.
    pub hidden_store: Option<String>,
}

/// The bench.
pub fn run(root: &Path, magr: &Path, results: &Path, options: &Options) -> Result<(), String> {
    let nsamples = options.nsamples;
    let dir = root.join("target/bench/scale");
    let model = dir.join(format!("llama-7b-{BLOCKS}-blocks"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !model.join("config.json").exists() {
        let status = Command::new(magr)
            .args(["gen-model", "--shape", "llama-7b", "--blocks"])
            .arg(BLOCKS.to_string())
            .args(["--force", "--out"])
            .arg(&model)
            .status()
            .map_err(|e| format!("{}: {e}", magr.display()))?;
        if !status.success() {
            return Err(format!("magr gen-model failed ({status})"));
        }
    }
    let id = format!(
        "{}{nsamples}{}",
        if options.magr { "magr-optq-" } else { "optq-" },
        options
            .hidden_store
            .as_ref()
            .map_or(String::new(), |h| format!("-hidden-{h}"))
    );
    let out = dir.join(format!("out-{id}"));
    let peak_file = dir.join(format!("peak-rss-{id}.txt"));
    let nsamples_arg = nsamples.to_string();
    let mut args = vec![
        "quantize",
        "--model",
        path_str(&model)?,
        "--bits",
        "4",
        "--method",
        "optq",
        "--nsamples",
        &nsamples_arg,
        "--seqlen",
        "2048",
        "--eval-windows",
        "0",
        "--formats",
        "fake-quant,gptq",
        "--force",
        "--resume",
        "--out",
        path_str(&out)?,
    ];
    if !options.magr {
        args.push("--no-magr");
    }
    if let Some(store) = &options.hidden_store {
        args.extend(["--hidden-store", store]);
    }
    // The commit that runs the blocks, read before the run (commits made meanwhile are not).
    let commit = commit(root);
    eprintln!("xtask: magr {}", args.join(" "));
    let status = Command::new("python3")
        .args(["-c", PEAK_RSS])
        .arg(&peak_file)
        .arg(magr)
        .args(args)
        .status()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if !status.success() {
        return Err(format!("magr quantize failed ({status})"));
    }
    let peak: f64 = std::fs::read_to_string(&peak_file)
        .map_err(|e| format!("{}: {e}", peak_file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", peak_file.display()))?;
    let report_path = out.join("report.json");
    let report: RunReport =
        read_typed(&report_path)?.ok_or_else(|| format!("{} is missing", report_path.display()))?;
    let md = section(&report, options, peak, &commit);
    println!("{md}");
    crate::results::write_section(results, Some(SECTION_MARKER), &md)
}

/// The section: the stages per block, extrapolated to 32 blocks, and the peak memory
/// (of the process that finished the run, which resumed after the blocks the report
/// says were restored, if any), and the `commit` that ran it.
fn section(report: &RunReport, options: &Options, peak_bytes: f64, commit: &str) -> String {
    let resumed = report.pipeline.resumed_after;
    let nsamples = options.nsamples;
    let t = &report.pipeline.seconds;
    let blocks = BLOCKS as f64;
    let stages = [
        ("capture (forward passes, `H = X^T X`)", t.capture),
        (
            "MagR (FISTA, at most 40 iterations; 0 when off)",
            t.preprocess,
        ),
        ("OPTQ", t.quantize),
        ("propagate (forward pass)", t.propagate),
    ];
    let per_block: f64 = stages.iter().map(|(_, s)| s / blocks).sum();
    let mut md = format!(
        "{SECTION_MARKER}\n## A 7B-shaped model: time and memory (`cargo xtask bench --scale`)\n\n"
    );
    let _ = writeln!(
        md,
        "LLaMA-2-7B's shape (hidden 4096, MLP 11008, 32 heads, vocab 32000) with random \
         f16 weights, `magr gen-model --shape llama-7b --blocks {BLOCKS}`; {} per \
         channel on {nsamples} x 2048 calibration tokens, fake-quant and GPTQ outputs, \
         `--hidden-store {}`; {} ({}), commit {}.\n",
        report.label(),
        options.hidden_store.as_deref().unwrap_or("auto"),
        machine(),
        if nsamples == 128 {
            "the paper's calibration set size"
        } else {
            "fewer windows than the paper's 128: the hidden states, and the capture and \
             propagate times, grow in proportion"
        },
        match resumed {
            None => commit.to_string(),
            Some(_) => format!("{commit} (the blocks checkpointed before it: their own commit)"),
        }
    );
    let _ = writeln!(md, "| stage | seconds per block | x {FULL_BLOCKS} blocks |");
    let _ = writeln!(md, "|---|---|---|");
    for (name, seconds) in stages {
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.0} |",
            seconds / blocks,
            seconds / blocks * FULL_BLOCKS as f64
        );
    }
    let _ = writeln!(
        md,
        "| all stages (+ embedding {:.1} s once) | {per_block:.1} | {:.0} ({:.1} h) |",
        t.embed,
        t.embed + per_block * FULL_BLOCKS as f64,
        (t.embed + per_block * FULL_BLOCKS as f64) / 3600.0
    );
    let peak = peak_bytes / f64::from(1u32 << 30);
    let _ = match resumed {
        None => writeln!(
            md,
            "\nPeak resident memory of the whole run (`getrusage`): **{peak:.2} GiB**; whole \
             run {:.0} s.",
            report.seconds_total
        ),
        Some(done) => writeln!(
            md,
            "\nThe run was interrupted after {done} finished block(s) and resumed from its \
             checkpoint (`--resume`): the stage seconds above are the whole run's (the \
             checkpoint carries those of the finished blocks); peak resident memory of the \
             process that resumed it (`getrusage`; it read the checkpointed hidden states \
             back and ran the remaining blocks): **{peak:.2} GiB**; that process ran {:.0} s.",
            report.seconds_total
        ),
    };
    md
}

#[cfg(test)]
mod tests {
    use super::{Options, section};

    /// The section says when the peak memory is that of a process that resumed the run,
    /// from the blocks the report says it restored.
    #[test]
    fn the_section_names_a_resumed_run() {
        let options = Options {
            nsamples: 128,
            magr: true,
            hidden_store: None,
        };
        let mut report = crate::table::tests::report();
        let whole = section(&report, &options, 2f64.powi(30), "abc");
        assert!(
            whole.contains("of the whole run (`getrusage`): **1.00 GiB**"),
            "{whole}"
        );
        assert!(!whole.contains("resumed"), "{whole}");
        report.pipeline.resumed_after = Some(1);
        let resumed = section(&report, &options, 2f64.powi(30), "abc");
        assert!(
            resumed.contains("interrupted after 1 finished block(s)")
                && resumed.contains("abc (the blocks checkpointed before it: their own commit)"),
            "{resumed}"
        );
    }
}
