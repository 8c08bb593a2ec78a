//! Run checkpoints: after each finished block the pipeline's state goes to a directory,
//! so that a killed run can resume and give the same bytes as an uninterrupted one.
//!
//! Files, each written under a temporary name and renamed: `block-NNNN.safetensors` (the
//! block's quantized weights in f32, and its packed GPTQ layers when the run packs them),
//! `hidden-NNNN.safetensors` (the calibration hidden states entering block NNNN) and,
//! last, `state.json` (the run's fingerprint, the next block, the records so far). A
//! crash between two renames leaves the previous `state.json` pointing at files that are
//! still there.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use llama_io::{LinearKind, Model};
use quantizers::{GptqTensors, ZeroFormat};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::{GptqCheckpoint, PipelineError, PipelineReport, PipelineSettings, PipelineState};

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
/// not change the bytes) and the calibration windows.
pub fn run_fingerprint(source: &str, settings: &PipelineSettings, windows: &[Vec<u32>]) -> String {
    // FNV-1a over the windows' tokens: a change of any token changes the fingerprint.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for token in windows.iter().flatten() {
        for byte in token.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!(
        "{source}; {:?}; {:?}; magr {:?}; act_order {}; true_sequential {}; batch {}; {} windows of {} tokens, fnv {hash:016x}",
        settings.spec,
        settings.method,
        settings.magr,
        settings.act_order,
        settings.true_sequential,
        settings.batch,
        windows.len(),
        windows.first().map_or(0, Vec::len),
    )
}

fn output_error(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Output(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary name.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), PipelineError>,
) -> Result<(), PipelineError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    write(&partial)?;
    fs::rename(&partial, path).map_err(|e| output_error(path, e))
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// Serializes `(name, dtype, shape, bytes)` tensors with `metadata` to `path`.
fn write_tensors(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: HashMap<String, String>,
) -> Result<(), PipelineError> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| output_error(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    write_atomic(path, |partial| {
        safetensors::serialize_to_file(views, Some(metadata), partial)
            .map_err(|e| output_error(partial, e))
    })
}

/// The named tensor of `file` (read from `path`) as `(shape, bytes)`, checked for `dtype`.
fn read_tensor<'a>(
    file: &'a SafeTensors<'a>,
    path: &Path,
    name: &str,
    dtype: Dtype,
) -> Result<(Vec<usize>, &'a [u8]), PipelineError> {
    let t = file
        .tensor(name)
        .map_err(|e| output_error(path, format!("checkpoint tensor {name}: {e}")))?;
    if t.dtype() != dtype {
        return Err(output_error(
            path,
            format!(
                "checkpoint tensor {name} is {:?}, expected {dtype:?}",
                t.dtype()
            ),
        ));
    }
    Ok((t.shape().to_vec(), t.data()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
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
        self.dir.join(format!("hidden-{block:04}.safetensors"))
    }

    /// Saves the block that `state` just finished (`state.next_block - 1`): its weights
    /// from `model`, its packed layers from `packed` (when given), the hidden states and
    /// the state; then removes hidden states of earlier blocks.
    ///
    /// # Errors
    /// Write errors, naming the file; a block not finished; a layer missing in `packed`.
    pub fn save(
        &self,
        model: &Model,
        state: &PipelineState,
        packed: Option<&GptqCheckpoint>,
    ) -> Result<(), PipelineError> {
        let block = state
            .next_block
            .checked_sub(1)
            .ok_or_else(|| PipelineError::Output("a checkpoint needs a finished block".into()))?;
        fs::create_dir_all(&self.dir).map_err(|e| output_error(&self.dir, e))?;

        let mut tensors = Vec::new();
        let mut metadata = HashMap::new();
        for kind in LinearKind::ALL {
            let suffix = kind.hf_suffix();
            let (outputs, inputs) = model.linear_shape(kind);
            let weight = model.linear_weight(block, kind)?;
            tensors.push((
                format!("{suffix}.weight"),
                Dtype::F32,
                vec![outputs, inputs],
                le_bytes(weight, f32::to_le_bytes),
            ));
            if let Some(packed) = packed {
                let t = packed.layer(block, kind).ok_or_else(|| {
                    PipelineError::Output(format!("{} was not packed", kind.hf_name(block)))
                })?;
                tensors.push((
                    format!("{suffix}.qweight"),
                    Dtype::I32,
                    t.qweight_shape().to_vec(),
                    le_bytes(&t.qweight, i32::to_le_bytes),
                ));
                tensors.push((
                    format!("{suffix}.qzeros"),
                    Dtype::I32,
                    t.qzeros_shape().to_vec(),
                    le_bytes(&t.qzeros, i32::to_le_bytes),
                ));
                tensors.push((
                    format!("{suffix}.scales"),
                    Dtype::F32,
                    t.scales_shape().to_vec(),
                    le_bytes(&t.scales, f32::to_le_bytes),
                ));
                tensors.push((
                    format!("{suffix}.g_idx"),
                    Dtype::I32,
                    vec![t.inputs],
                    le_bytes(&t.g_idx, i32::to_le_bytes),
                ));
                metadata.insert(
                    format!("{suffix}.format"),
                    t.format.checkpoint_format().to_string(),
                );
                metadata.insert(format!("{suffix}.bits"), t.bits.to_string());
            }
        }
        write_tensors(&self.block_path(block), &tensors, metadata)?;

        let mut hidden = Vec::new();
        for (i, h) in state.hidden.iter().enumerate() {
            let values = h.flatten_all()?.to_vec1::<f32>()?;
            hidden.push((
                format!("batch.{i}"),
                Dtype::F32,
                h.dims().to_vec(),
                le_bytes(&values, f32::to_le_bytes),
            ));
        }
        write_tensors(&self.hidden_path(state.next_block), &hidden, HashMap::new())?;

        let file = StateFile {
            fingerprint: self.fingerprint.clone(),
            next_block: state.next_block,
            report: state.report.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| output_error(&self.dir, e))?;
        let path = self.dir.join(STATE);
        write_atomic(&path, |partial| {
            fs::write(partial, text).map_err(|e| output_error(partial, e))
        })?;
        for earlier in 0..state.next_block {
            let _ = fs::remove_file(self.hidden_path(earlier));
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

    /// Loads the saved state: writes the finished blocks' weights into `model` and their
    /// packed layers into `packed` (when given), and returns the state to continue from;
    /// `None` when nothing is saved.
    ///
    /// # Errors
    /// A checkpoint of another run (different fingerprint) or another model shape, and
    /// missing or corrupt files, each named.
    pub fn load(
        &self,
        model: &mut Model,
        mut packed: Option<&mut GptqCheckpoint>,
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
            let path = self.block_path(block);
            let bytes = fs::read(&path).map_err(|e| output_error(&path, e))?;
            let tensors = SafeTensors::deserialize(&bytes).map_err(|e| output_error(&path, e))?;
            let (_, metadata) =
                SafeTensors::read_metadata(&bytes).map_err(|e| output_error(&path, e))?;
            let metadata = metadata.metadata().clone().unwrap_or_default();
            for kind in LinearKind::ALL {
                let suffix = kind.hf_suffix();
                let (shape, data) =
                    read_tensor(&tensors, &path, &format!("{suffix}.weight"), Dtype::F32)?;
                let (outputs, inputs) = model.linear_shape(kind);
                if shape != [outputs, inputs] {
                    return Err(output_error(
                        &path,
                        format!(
                            "{suffix}.weight has shape {shape:?}, the model {:?}",
                            [outputs, inputs]
                        ),
                    ));
                }
                model.set_linear_weight(block, kind, &f32s(data))?;
                if let Some(packed) = packed.as_deref_mut() {
                    let meta = |key: &str| {
                        metadata.get(&format!("{suffix}.{key}")).cloned().ok_or_else(|| {
                            output_error(&path, format!("{suffix}: no packed layer (the checkpoint was made without it)"))
                        })
                    };
                    let format = match meta("format")?.as_str() {
                        "gptq" => ZeroFormat::V1,
                        "gptq_v2" => ZeroFormat::V2,
                        other => {
                            return Err(output_error(
                                &path,
                                format!("{suffix}: unknown format {other}"),
                            ));
                        }
                    };
                    let bits: u32 = meta("bits")?.parse().map_err(|e| output_error(&path, e))?;
                    let (scales_shape, scales) =
                        read_tensor(&tensors, &path, &format!("{suffix}.scales"), Dtype::F32)?;
                    let groups = scales_shape.first().copied().unwrap_or(0);
                    let t = GptqTensors {
                        bits,
                        inputs,
                        outputs,
                        groups,
                        qweight: i32s(
                            read_tensor(&tensors, &path, &format!("{suffix}.qweight"), Dtype::I32)?
                                .1,
                        ),
                        format,
                        qzeros: i32s(
                            read_tensor(&tensors, &path, &format!("{suffix}.qzeros"), Dtype::I32)?
                                .1,
                        ),
                        scales: f32s(scales),
                        g_idx: i32s(
                            read_tensor(&tensors, &path, &format!("{suffix}.g_idx"), Dtype::I32)?.1,
                        ),
                    };
                    // Validates every length and index.
                    quantizers::dequantize_gptq(&t)
                        .map_err(|e| output_error(&path, format!("{suffix}: {e}")))?;
                    packed.insert(block, kind, t);
                }
            }
        }
        let path = self.hidden_path(file.next_block);
        let bytes = fs::read(&path).map_err(|e| output_error(&path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| output_error(&path, e))?;
        let mut hidden = Vec::new();
        for i in 0..tensors.len() {
            let (shape, data) = read_tensor(&tensors, &path, &format!("batch.{i}"), Dtype::F32)?;
            hidden.push(Tensor::from_vec(f32s(data), shape, model.device())?);
        }
        Ok(Some(PipelineState {
            next_block: file.next_block,
            hidden,
            report: file.report,
        }))
    }
}
