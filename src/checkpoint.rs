//! Run checkpoints: after each finished block the pipeline's state goes to a directory,
//! so that a killed run can resume and give the same bytes as an uninterrupted one.
//!
//! Files, each written under a temporary name and renamed: `block-NNNN.safetensors` (the
//! block's quantized weights in f32, and each output format's state under
//! `{format}/...`), `hidden-NNNN/` (the calibration hidden states entering block NNNN,
//! a file per batch as [`HiddenStates::save`] writes them: hard links when the run spills
//! them to `spill/`) and, last, `state.json` (the run's fingerprint, the next block, the
//! records so far). A crash between two renames leaves the previous `state.json` pointing
//! at files that are still there.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use llama_io::stored::Encoding;
use llama_io::{LinearKind, Model, NamedTensor, TensorData};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::output::{FormatState, OutputFormat, SavedBlock};
use magr_report::PipelineReport;

use crate::{HiddenStates, PipelineError, PipelineSettings, PipelineState};

const STATE: &str = "state.json";

/// `state.json`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    fingerprint: String,
    next_block: usize,
    report: PipelineReport,
}

/// A checkpoint directory of one run, identified by its fingerprint.
#[derive(Debug, Clone)]
pub struct RunCheckpoint {
    dir: PathBuf,
    fingerprint: String,
}

/// A fingerprint of everything that decides a run's output: `source` (the model and
/// output formats, as the caller names them), the settings (parallelism excepted: it does
/// not change the bytes) and the calibration windows; the SHA-256 of all of them, after a
/// readable summary.
pub fn run_fingerprint(source: &str, settings: &PipelineSettings, windows: &[Vec<u32>]) -> String {
    let summary = format!(
        "{source}; {:?}; preset {:?}; method {} {}; preprocessor {} {}; act_order {}; \
         true_sequential {}; batch {}; hidden {}; backend {}; {} windows of {} tokens",
        settings.spec,
        settings.gguf_preset,
        settings.method.name(),
        settings.method.parameters(),
        settings.preprocessor.name(),
        settings.preprocessor.parameters(),
        settings.act_order,
        settings.true_sequential,
        settings.batch,
        settings.hidden_dtype.name(),
        settings.backend.name(),
        windows.len(),
        windows.first().map_or(0, Vec::len),
    );
    let mut hash = Sha256::new();
    hash.update(summary.as_bytes());
    for token in windows.iter().flatten() {
        hash.update(token.to_le_bytes());
    }
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{summary}; sha256 {digest}")
}

fn output_error(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Output(format!("{}: {e}", path.display()))
}

/// Serializes `tensors` with `metadata` to `path`, atomically.
fn write_tensors<V: safetensors::View>(
    path: &Path,
    views: impl IntoIterator<Item = (String, V)>,
    metadata: HashMap<String, String>,
) -> Result<(), PipelineError> {
    atomic_fs::write_with(path, |partial| {
        safetensors::serialize_to_file(views, Some(metadata), partial)
            .map_err(|e| output_error(partial, e))
    })
}

impl RunCheckpoint {
    /// The checkpoint of the run with `fingerprint` in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>, fingerprint: String) -> Self {
        RunCheckpoint {
            dir: dir.into(),
            fingerprint,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn block_path(&self, block: usize) -> PathBuf {
        self.dir.join(format!("block-{block:04}.safetensors"))
    }

    fn hidden_path(&self, block: usize) -> PathBuf {
        self.dir.join(format!("hidden-{block:04}"))
    }

    /// Where a run that spills its hidden states keeps them: beside the checkpoint's
    /// saved ones, on the same file system (they are saved as hard links).
    pub fn spill_dir(&self) -> PathBuf {
        self.dir.join("spill")
    }

    /// Saves the block that `state` just finished (`state.next_block - 1`): its weights
    /// from `model`, each format's state, the hidden states and the state; then removes
    /// hidden states of earlier blocks. The block's weights in `model` are then read
    /// from the saved file ([`Model::set_linear_stored`]) and each format is handed its
    /// saved state ([`OutputFormat::release_block`]): a finished block leaves the memory.
    ///
    /// # Errors
    /// Write errors, naming the file; a block not finished; a format's errors.
    pub fn save(
        &self,
        model: &mut Model,
        state: &PipelineState,
        formats: &mut [&mut dyn OutputFormat],
    ) -> Result<(), PipelineError> {
        let block = state
            .next_block
            .checked_sub(1)
            .ok_or_else(|| PipelineError::Output("a checkpoint needs a finished block".into()))?;
        fs::create_dir_all(&self.dir).map_err(|e| output_error(&self.dir, e))?;

        let mut tensors = Vec::new();
        let mut metadata = HashMap::new();
        for kind in LinearKind::ALL {
            let (outputs, inputs) = model.linear_shape(kind);
            tensors.push(NamedTensor {
                name: format!("{}.weight", kind.hf_suffix()),
                shape: vec![outputs, inputs],
                data: TensorData::F32(model.linear_weight(block, kind)?.to_vec()),
            });
        }
        for format in formats.iter() {
            let name = format.name();
            let FormatState {
                tensors: saved,
                metadata: entries,
            } = format.save_block(block)?;
            tensors.extend(saved.into_iter().map(|t| NamedTensor {
                name: format!("{name}/{}", t.name),
                ..t
            }));
            metadata.extend(entries.into_iter().map(|(k, v)| (format!("{name}/{k}"), v)));
        }
        let views = tensors.iter().map(|t| (t.name.clone(), t));
        write_tensors(&self.block_path(block), views, metadata)?;
        drop(tensors);
        self.leave_weights_in_file(model, block)?;
        self.leave_formats_in_file(formats, block, false)?;

        // One batch at a time: the hidden states are never twice in memory.
        atomic_fs::write_dir(&self.hidden_path(state.next_block), true, |dir| {
            state.hidden.save(dir)
        })?;

        let file = StateFile {
            fingerprint: self.fingerprint.clone(),
            next_block: state.next_block,
            report: state.report.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| output_error(&self.dir, e))?;
        atomic_fs::write(&self.dir.join(STATE), text)
            .map_err(|e| PipelineError::Output(e.to_string()))?;
        for earlier in 0..state.next_block {
            let _ = fs::remove_dir_all(self.hidden_path(earlier));
        }
        Ok(())
    }

    /// Removes the checkpoint: its state first, so that a process killed midway leaves
    /// no state claiming blocks whose files are gone.
    ///
    /// # Errors
    /// File system errors, naming the path.
    pub fn discard(&self) -> Result<(), PipelineError> {
        let state = self.dir.join(STATE);
        match fs::remove_file(&state) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(output_error(&state, e));
            }
            _ => {}
        }
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(output_error(&self.dir, e)),
            _ => Ok(()),
        }
    }

    /// Points the weights of `block` in `model` at the saved block file, where they stay
    /// (read when used; the values in memory are dropped).
    fn leave_weights_in_file(&self, model: &mut Model, block: usize) -> Result<(), PipelineError> {
        let path = self.block_path(block);
        let mut stored = llama_io::stored_tensors(&path)?;
        for kind in LinearKind::ALL {
            let name = format!("{}.weight", kind.hf_suffix());
            let tensor = stored
                .remove(&name)
                .ok_or_else(|| output_error(&path, format!("no tensor {name}")))?;
            if tensor.encoding() != Encoding::Safetensors(Dtype::F32) {
                return Err(output_error(
                    &path,
                    format!("{name} is {:?}, expected F32", tensor.encoding()),
                ));
            }
            model.set_linear_stored(block, kind, tensor)?;
        }
        Ok(())
    }

    /// Hands each format its state of `block` as the block file holds it
    /// ([`OutputFormat::release_block`]), after restoring it from there first when
    /// `restore` ([`OutputFormat::restore_block`], for `--resume`).
    fn leave_formats_in_file(
        &self,
        formats: &mut [&mut dyn OutputFormat],
        block: usize,
        restore: bool,
    ) -> Result<(), PipelineError> {
        let path = self.block_path(block);
        let (mut tensors, metadata) = llama_io::stored_tensors_and_metadata(&path)?;
        for format in formats.iter_mut() {
            let prefix = format!("{}/", format.name());
            let strip = |name: &String| name.strip_prefix(&prefix).map(str::to_string);
            let names: Vec<String> = tensors
                .keys()
                .filter(|n| n.starts_with(&prefix))
                .cloned()
                .collect();
            let saved = SavedBlock {
                tensors: (names.into_iter())
                    .filter_map(|n| Some((strip(&n)?, tensors.remove(&n)?)))
                    .collect(),
                metadata: (metadata.iter())
                    .filter_map(|(k, v)| Some((strip(k)?, v.clone())))
                    .collect(),
            };
            if restore {
                format
                    .restore_block(block, saved.read()?)
                    .map_err(|e| output_error(&path, e))?;
            }
            format
                .release_block(block, saved)
                .map_err(|e| output_error(&path, e))?;
        }
        Ok(())
    }

    /// The number of finished blocks saved here, if a state is saved.
    pub fn blocks_done(&self) -> Option<usize> {
        let text = fs::read_to_string(self.dir.join(STATE)).ok()?;
        serde_json::from_str::<StateFile>(&text)
            .ok()
            .map(|s| s.next_block)
    }

    /// Loads the saved state: writes the finished blocks' weights into `model` and
    /// restores each format's state, and returns the state to continue from; `None` when
    /// nothing is saved.
    ///
    /// # Errors
    /// A checkpoint of another run (different fingerprint) or another model shape, and
    /// missing or corrupt files, each named.
    pub fn load(
        &self,
        model: &mut Model,
        formats: &mut [&mut dyn OutputFormat],
    ) -> Result<Option<PipelineState>, PipelineError> {
        let path = self.dir.join(STATE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(output_error(&path, e)),
        };
        let file: StateFile = serde_json::from_str(&text).map_err(|e| output_error(&path, e))?;
        if file.fingerprint != self.fingerprint {
            return Err(PipelineError::Settings(format!(
                "the checkpoint in {} belongs to another run (model, settings or calibration differ): \
                 it was made by `{}`, this run is `{}`; remove it or run without resuming",
                self.dir.display(),
                file.fingerprint,
                self.fingerprint
            )));
        }
        if file.next_block == 0 || file.next_block > model.num_blocks() {
            return Err(output_error(
                &path,
                format!("next block {} is not in this model", file.next_block),
            ));
        }
        for block in 0..file.next_block {
            self.leave_weights_in_file(model, block)?;
            self.leave_formats_in_file(formats, block, true)?;
        }
        // Left in their files (the pipeline brings them into memory or keeps them
        // spilled, as the run asks).
        let hidden = HiddenStates::open(&self.hidden_path(file.next_block))?;
        Ok(Some(PipelineState {
            next_block: file.next_block,
            hidden,
            report: file.report,
        }))
    }
}
