//! A `magr quantize` run around the pipeline: the staged output directory, the run
//! checkpoint and `--resume`, the observer that feeds the output formats, and writing
//! everything at the end. The CLI parses flags and shows progress; the logic is here.
//!
//! The output directory `OUT` is built as `OUT.partial` (holding the run checkpoint in
//! `checkpoint/` while blocks are quantized) and renamed when everything is in it; a run
//! that fails before a block is checkpointed leaves nothing behind, one that fails later
//! keeps `OUT.partial` for `--resume`. One run at a time writes an output: the run holds
//! the lock `OUT.lock` (removed at its end, released by the system if it is killed).

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};

use faer::Par;
use llama_io::{LinearKind, Model};
use magr_report::{Evaluation, LayerHeldOut, ReferenceComparison, RunReport, magnitude_svg};
use quantizers::QuantizedLinear;

use crate::checkpoint::RunCheckpoint;
use crate::error::PipelineError;
use crate::output::OutputFormat;
use crate::pipeline::{
    PipelineObserver, PipelineSettings, PipelineState, Progress, continue_quantize_model,
    quantize_model,
};
use crate::run_fingerprint;
use magr_report::PipelineReport;

fn io_error(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Output(format!("{}: {e}", path.display()))
}

/// The output directory while it is being written.
#[derive(Debug)]
pub struct Staging {
    out: PathBuf,
    partial: PathBuf,
    force: bool,
    keep: Cell<bool>,
    // Dropped last: the staging directory is settled before another run may take it.
    _lock: atomic_fs::Lock,
}

impl Staging {
    /// Stages the output `out` in `OUT.partial`, before anything is loaded: makes the
    /// directory `out` goes in if it is missing; takes the lock `OUT.lock` (refused while
    /// another run holds it); refuses an existing `out` without `force`; replaces a
    /// leftover `OUT.partial`, one holding checkpointed blocks only with `force`, except
    /// that `resume` keeps its checkpoint (and only that: outputs and temporaries of a
    /// killed run are written again).
    ///
    /// # Errors
    /// Each refusal above, naming the path and the flag; a directory that cannot be made.
    pub fn create(out: &Path, force: bool, resume: bool) -> Result<Self, PipelineError> {
        atomic_fs::create_parent_dirs(out).map_err(|e| PipelineError::Output(e.to_string()))?;
        let lock = with_suffix(out, ".lock");
        let lock = atomic_fs::Lock::try_acquire(&lock)
            .map_err(|e| PipelineError::Output(format!("cannot lock the output: {e}")))?
            .ok_or_else(|| {
                PipelineError::Output(format!(
                    "another magr run is writing {} (it holds {}): wait for it to end, or \
                     choose another --out",
                    out.display(),
                    lock.display()
                ))
            })?;
        if out.exists() && !force {
            return Err(PipelineError::Output(format!(
                "{} exists: pass --force to replace it",
                out.display()
            )));
        }
        let partial = with_suffix(out, ".partial");
        if partial.exists() {
            let done = checkpointed_blocks(&partial);
            if resume && done.is_some() {
                // What a killed run left besides its checkpoint (outputs half written,
                // temporaries) is written again from the checkpoint.
                for entry in fs::read_dir(&partial).map_err(|e| io_error(&partial, e))? {
                    let path = entry.map_err(|e| io_error(&partial, e))?.path();
                    if path != checkpoint_dir(&partial) {
                        remove_entry(&path)?;
                    }
                }
            } else {
                if let Some(done) = done.filter(|_| !force && !resume) {
                    return Err(PipelineError::Output(format!(
                        "{} holds {done} checkpointed blocks of an interrupted run: pass \
                         --resume to continue it, or --force to start over",
                        partial.display()
                    )));
                }
                fs::remove_dir_all(&partial).map_err(|e| io_error(&partial, e))?;
            }
        }
        fs::create_dir_all(&partial).map_err(|e| {
            PipelineError::Output(format!(
                "cannot create the output directory {}: {e}",
                partial.display()
            ))
        })?;
        Ok(Staging {
            out: out.to_path_buf(),
            partial,
            force,
            keep: Cell::new(false),
            _lock: lock,
        })
    }

    /// The final output directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The directory being written (`OUT.partial`).
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// The run checkpoint kept in the staging directory, for the run `fingerprint`.
    pub fn checkpoint(&self, fingerprint: String) -> RunCheckpoint {
        RunCheckpoint::new(checkpoint_dir(&self.partial), fingerprint)
    }

    /// Where a run that keeps its calibration hidden states on disk spills them
    /// ([`PipelineSettings::hidden_spill`]): beside the checkpoint, whose saved hidden
    /// states are hard links to these files.
    pub fn spill_dir(&self) -> PathBuf {
        self.checkpoint(String::new()).spill_dir()
    }

    /// Blocks saved in the checkpoint, if any.
    pub fn checkpointed_blocks(&self) -> Option<usize> {
        checkpointed_blocks(&self.partial).filter(|&n| n > 0)
    }

    /// After a failed run: when blocks are checkpointed, keeps `OUT.partial` (it is
    /// removed otherwise) and returns the line that says how to go on.
    pub fn keep_checkpoint(&self) -> Option<String> {
        let done = self.checkpointed_blocks()?;
        self.keep.set(true);
        Some(format!(
            "{done} finished blocks are kept in {}: run the same command with --resume to continue",
            self.partial.display()
        ))
    }

    /// Removes the checkpoint and renames the staging directory to the output
    /// (replacing an existing one, which `create` allowed only with `force`).
    ///
    /// # Errors
    /// File system errors, naming the path.
    pub fn commit(self) -> Result<PathBuf, PipelineError> {
        RunCheckpoint::new(checkpoint_dir(&self.partial), String::new()).discard()?;
        if self.out.exists() && !self.force {
            return Err(PipelineError::Output(format!(
                "{} appeared during the run: pass --force to replace it",
                self.out.display()
            )));
        }
        atomic_fs::replace_dir(&self.partial, &self.out)?;
        self.keep.set(true);
        Ok(self.out.clone())
    }
}

impl Drop for Staging {
    /// A run that fails before checkpointing a block leaves no partial output behind.
    fn drop(&mut self) {
        if !self.keep.get() && self.partial.exists() {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// `path` with `suffix` appended to its last component (`OUT` -> `OUT.partial`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes a file or a directory tree.
fn remove_entry(path: &Path) -> Result<(), PipelineError> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .map_err(|e| io_error(path, e))
}

/// Where a staging directory keeps its run checkpoint.
fn checkpoint_dir(partial: &Path) -> PathBuf {
    partial.join("checkpoint")
}

/// Blocks saved in the run checkpoint of the staging directory `partial`, if a state is
/// saved there.
fn checkpointed_blocks(partial: &Path) -> Option<usize> {
    RunCheckpoint::new(checkpoint_dir(partial), String::new()).blocks_done()
}

/// The observer of a run: progress and warnings to the caller, each quantized layer to
/// the formats, each finished block to the checkpoint.
pub struct RunObserver<'a> {
    /// Progress and warnings (`block`, layer, text) for the user.
    pub events: &'a mut dyn RunEvents,
    /// The formats being written.
    pub formats: &'a mut [Box<dyn OutputFormat>],
    /// The run checkpoint, when the run has an output directory.
    pub checkpoint: Option<&'a RunCheckpoint>,
}

/// What a run tells its user while it goes.
pub trait RunEvents {
    /// Where the pipeline is.
    fn progress(&mut self, progress: Progress);
    /// A warning about layer `kind` of `block`.
    fn warning(&mut self, block: usize, kind: LinearKind, warning: &str);
}

impl PipelineObserver for RunObserver<'_> {
    fn progress(&mut self, progress: Progress) {
        self.events.progress(progress);
    }

    fn warning(&mut self, block: usize, kind: LinearKind, warning: &str) {
        self.events.warning(block, kind, warning);
    }

    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        quantized: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        for format in self.formats.iter_mut() {
            format.layer_quantized(block, kind, quantized)?;
        }
        Ok(())
    }

    fn block_finished(
        &mut self,
        model: &mut Model,
        state: &PipelineState,
    ) -> Result<(), PipelineError> {
        match self.checkpoint {
            Some(c) => {
                let mut formats: Vec<&mut dyn OutputFormat> = (self.formats.iter_mut())
                    .map(|f| f.as_mut() as &mut dyn OutputFormat)
                    .collect();
                c.save(model, state, &mut formats)
            }
            None => Ok(()),
        }
    }
}

/// Quantizes `model` with `settings` on the calibration `windows`, feeding `formats`
/// (each first checks that it can store `model`);
/// with a `staging` directory, checkpoints every finished block there and, if `resume`,
/// continues from the blocks already checkpointed. `source` names the model and
/// formats for the run's fingerprint.
///
/// # Errors
/// The pipeline's, the formats' and the checkpoint's errors (another run's checkpoint
/// among them).
#[allow(clippy::too_many_arguments)]
pub fn run_pipeline(
    model: &mut Model,
    windows: &[Vec<u32>],
    settings: &PipelineSettings,
    source: &str,
    staging: Option<&Staging>,
    resume: bool,
    formats: &mut [Box<dyn OutputFormat>],
    events: &mut dyn RunEvents,
) -> Result<PipelineReport, PipelineError> {
    settings.check(
        model.config(),
        windows.iter().map(Vec::len).max().unwrap_or(0),
    )?;
    for format in formats.iter() {
        format.check(model)?;
    }
    let checkpoint = staging.map(|s| s.checkpoint(run_fingerprint(source, settings, windows)));
    let resumed = match &checkpoint {
        Some(c) if resume => {
            let mut formats: Vec<&mut dyn OutputFormat> = formats
                .iter_mut()
                .map(|f| f.as_mut() as &mut dyn OutputFormat)
                .collect();
            c.load(model, &mut formats)?
        }
        _ => None,
    };
    if let Some(state) = &resumed {
        for block in 0..state.next_block {
            events.progress(Progress::Block {
                block,
                blocks: model.num_blocks(),
            });
            for kind in LinearKind::ALL {
                events.progress(Progress::Layer { block, kind });
            }
        }
    }
    let mut observer = RunObserver {
        events,
        formats,
        checkpoint: checkpoint.as_ref(),
    };
    match resumed {
        Some(state) => {
            let restored = state.next_block;
            let mut report = continue_quantize_model(model, state, settings, &mut observer)?;
            report.resumed_after = Some(restored);
            Ok(report)
        }
        None => quantize_model(model, windows, settings, &mut observer),
    }
}

/// Writes everything under the output directory `dir`: one subdirectory per format,
/// then `report.json`, `report.md` and (with a preprocessor) `magnitudes.svg`. Returns
/// the formats' lines for the user.
///
/// # Errors
/// The formats' errors and write errors, naming the file.
pub fn write_outputs(
    dir: &Path,
    model: &Model,
    formats: &[Box<dyn OutputFormat>],
    report: &RunReport,
) -> Result<Vec<String>, PipelineError> {
    let mut notes = Vec::new();
    for format in formats {
        notes.extend(format.write(model, &dir.join(format.name()))?);
    }
    let json =
        serde_json::to_string_pretty(report).map_err(|e| io_error(&dir.join("report.json"), e))?;
    atomic_fs::write(&dir.join("report.json"), json)?;
    atomic_fs::write(&dir.join("report.md"), report.markdown())?;
    let preprocessor = &report.settings.preprocessor;
    if preprocessor.name != "none"
        && let Some(svg) = magnitude_svg(&report.pipeline.layers, &preprocessor.label)
    {
        atomic_fs::write(&dir.join("magnitudes.svg"), svg)?;
    }
    Ok(notes)
}

/// The perplexity of `model` on `tokens` of the text at `text` (the first `windows`
/// windows of `seqlen`, each scored from position `first`: 0 is the papers' protocol,
/// `seqlen / 2` llama.cpp's). With a `reference` model of the same shapes (and its
/// path), both run on the same windows ([`llama_io::compare`]) and the evaluation also
/// gives the KL divergence from the reference, the top-1 agreement, the hidden-state
/// error per block and each layer's loss per token on this text. `progress(done,
/// total)` after each window (with a reference: after each block and the head).
///
/// # Errors
/// The forward pass's errors, a text shorter than one window, a reference of other
/// shapes.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    reference: Option<(&Model, &Path)>,
    text: &Path,
    tokens: &[u32],
    seqlen: usize,
    (windows, first): (usize, usize),
    par: Par,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Evaluation, PipelineError> {
    let max = Some(windows);
    let (report, comparison) = match reference {
        None => {
            let r = llama_io::perplexity_from(model, tokens, seqlen, max, first, par, progress)?;
            ((r.windows, r.tokens_scored, r.ppl, r.seconds), None)
        }
        Some((reference, path)) => {
            let c = llama_io::compare(model, reference, tokens, seqlen, max, first, par, progress)?;
            let report = (c.windows, c.tokens_scored, c.ppl, c.seconds);
            let layers = c.layers.iter().map(|l| LayerHeldOut {
                block: l.block,
                layer: l.kind.hf_suffix().to_string(),
                loss_per_token: l.loss_per_token,
            });
            let comparison = ReferenceComparison {
                model: path.to_path_buf(),
                ppl: c.reference_ppl,
                mean_kl: c.mean_kl,
                top1_agreement: c.top1_agreement,
                layers: layers.collect(),
                block_error: c.block_error,
            };
            (report, Some(comparison))
        }
    };
    let (windows, tokens_scored, ppl, seconds) = report;
    Ok(Evaluation {
        text: text.to_path_buf(),
        seqlen,
        windows,
        first_scored: first,
        tokens_scored,
        ppl,
        seconds,
        tokens_per_second: (windows * seqlen) as f64 / seconds,
        reference: comparison,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("magr-run-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn staging_refuses_an_existing_output_without_force_and_replaces_it_with() {
        let dir = scratch("force");
        let out = dir.join("out");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("old.txt"), "old").unwrap();
        let e = Staging::create(&out, false, false).unwrap_err().to_string();
        assert!(e.contains("--force") && e.contains("out"), "{e}");
        assert!(!dir.join("out.partial").exists());

        let staging = Staging::create(&out, true, false).unwrap();
        fs::write(staging.partial().join("new.txt"), "new").unwrap();
        assert_eq!(staging.commit().unwrap(), out);
        assert!(!out.join("old.txt").exists());
        assert_eq!(fs::read_to_string(out.join("new.txt")).unwrap(), "new");
        assert!(!dir.join("out.partial").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn staging_makes_the_missing_directories_above_the_output() {
        let dir = scratch("parents");
        let out = dir.join("a/b/out");
        let staging = Staging::create(&out, false, false).unwrap();
        assert!(dir.join("a/b/out.lock").exists());
        fs::write(staging.partial().join("x.txt"), "x").unwrap();
        assert_eq!(staging.commit().unwrap(), out);
        assert_eq!(fs::read_to_string(out.join("x.txt")).unwrap(), "x");
        assert!(!dir.join("a/b/out.lock").exists());

        // A file where a directory must go: the error names the path.
        fs::write(dir.join("file"), "").unwrap();
        let e = Staging::create(&dir.join("file/out"), false, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot make this directory for") && e.contains("file/out"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_run_leaves_nothing_unless_blocks_are_checkpointed() {
        let dir = scratch("fail");
        let out = dir.join("out");
        let staging = Staging::create(&out, false, false).unwrap();
        assert_eq!(staging.keep_checkpoint(), None);
        drop(staging);
        assert!(!dir.join("out.partial").exists());

        // A checkpoint with one finished block: kept, and the error says how to go on.
        let staging = Staging::create(&out, false, false).unwrap();
        let checkpoint = checkpoint_dir(staging.partial());
        fs::create_dir_all(&checkpoint).unwrap();
        fs::write(
            checkpoint.join("state.json"),
            r#"{"fingerprint": "f", "next_block": 1, "report": {"layers": [], "seconds": {"embed": 0, "capture": 0, "preprocess": 0, "quantize": 0, "propagate": 0}, "calibration": [1, 8]}}"#,
        )
        .unwrap();
        let hint = staging.keep_checkpoint().unwrap();
        assert!(
            hint.contains("1 finished blocks") && hint.contains("--resume"),
            "{hint}"
        );
        drop(staging);
        assert!(dir.join("out.partial/checkpoint/state.json").exists());
        // A new run neither throws it away nor starts without --resume or --force.
        let e = Staging::create(&out, false, false).unwrap_err().to_string();
        assert!(e.contains("--resume") && e.contains("--force"), "{e}");
        let resumed = Staging::create(&out, false, true).unwrap();
        assert_eq!(resumed.checkpointed_blocks(), Some(1));
        drop(resumed);
        let fresh = Staging::create(&out, true, false).unwrap();
        assert_eq!(fresh.checkpointed_blocks(), None);
        drop(fresh);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_run_on_the_same_output_is_refused_while_the_first_holds_it() {
        let dir = scratch("lock");
        let out = dir.join("out");
        let first = Staging::create(&out, false, false).unwrap();
        fs::write(first.partial().join("a.txt"), "first").unwrap();
        for (force, resume) in [(false, false), (true, false), (false, true)] {
            let e = Staging::create(&out, force, resume)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("another magr run") && e.contains("out.lock"),
                "{e}"
            );
        }
        assert_eq!(
            fs::read_to_string(first.partial().join("a.txt")).unwrap(),
            "first"
        );
        first.commit().unwrap();
        assert!(!dir.join("out.lock").exists());
        let second = Staging::create(&out, true, false).unwrap();
        drop(second);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resuming_keeps_only_the_checkpoint_of_a_killed_run() {
        let dir = scratch("killed");
        let out = dir.join("out");
        let partial = dir.join("out.partial");
        // Killed while writing outputs: half an output directory and a temporary.
        let checkpoint = checkpoint_dir(&partial);
        fs::create_dir_all(&checkpoint).unwrap();
        fs::write(
            checkpoint.join("state.json"),
            r#"{"fingerprint": "f", "next_block": 2, "report": {"layers": [], "seconds": {"embed": 0, "capture": 0, "preprocess": 0, "quantize": 0, "propagate": 0}, "calibration": [1, 8]}}"#,
        )
        .unwrap();
        fs::create_dir_all(partial.join("gptq")).unwrap();
        fs::write(partial.join("gptq/config.json"), "{").unwrap();
        fs::write(partial.join(".report.json.tmp-1-0"), "{").unwrap();
        let resumed = Staging::create(&out, false, true).unwrap();
        assert_eq!(resumed.checkpointed_blocks(), Some(2));
        let left: Vec<_> = fs::read_dir(&partial)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["checkpoint"]);
        drop(resumed);
        // Killed before its first checkpoint: nothing to resume, the leftovers go.
        fs::create_dir_all(partial.join("checkpoint")).unwrap();
        fs::write(partial.join("checkpoint/.state.json.tmp-1-0"), "{").unwrap();
        let fresh = Staging::create(&out, false, true).unwrap();
        assert_eq!(fresh.checkpointed_blocks(), None);
        assert_eq!(fs::read_dir(&partial).unwrap().count(), 0);
        drop(fresh);
        fs::remove_dir_all(&dir).unwrap();
    }
}
