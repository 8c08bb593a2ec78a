//! The calibration hidden states between blocks: one tensor `[batch, seqlen, hidden]` per
//! batch of windows, in the run's [`HiddenDtype`], each kept in memory or spilled to a
//! file of its own (read when used, so only the batch being worked on is in memory).
//!
//! A spilled batch is a safetensors file `batch-NNNN.safetensors` holding one tensor
//! `hidden`; the run checkpoint keeps its hidden states in the same layout (a directory of
//! batch files, hard links to the spilled ones), so a resumed run reads them in place.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use llama_io::StoredTensor;
use llama_io::stored::Encoding;
use safetensors::Dtype;

use crate::error::PipelineError;

/// The dtype the calibration hidden states are kept in between blocks (each batch is
/// widened to f32 for the forward pass and rounded back after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HiddenDtype {
    /// Exact: the reference semantics.
    #[default]
    F32,
    /// bfloat16, round to nearest even: half the memory (2 GiB instead of 4 for
    /// 128 x 2048 tokens of a 7B model), each block's input rounded to 8 significant bits.
    Bf16,
}

impl HiddenDtype {
    /// The name of flags and reports (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            HiddenDtype::F32 => "f32",
            HiddenDtype::Bf16 => "bf16",
        }
    }

    /// candle's dtype.
    pub fn dtype(self) -> DType {
        match self {
            HiddenDtype::F32 => DType::F32,
            HiddenDtype::Bf16 => DType::BF16,
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        self.dtype().size_in_bytes()
    }
}

/// One batch: its values in memory, or its file.
#[derive(Debug, Clone)]
enum Batch {
    Resident(Tensor),
    Spilled(StoredTensor),
}

/// The name of the one tensor in a batch file.
const TENSOR: &str = "hidden";

/// The file of batch `i` in `dir`.
fn batch_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("batch-{i:04}.safetensors"))
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Output(format!("{}: {e}", path.display()))
}

/// The calibration hidden states, per batch of windows, in memory or spilled to files in
/// a directory (see the module documentation).
#[derive(Debug, Clone)]
pub struct HiddenStates {
    batches: Vec<Batch>,
    /// Where [`HiddenStates::set`] writes batches; `None`: in memory.
    spill: Option<PathBuf>,
}

impl HiddenStates {
    /// Batches held in memory.
    pub fn resident(batches: Vec<Tensor>) -> Self {
        HiddenStates {
            batches: batches.into_iter().map(Batch::Resident).collect(),
            spill: None,
        }
    }

    /// The number of batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The directory batches are spilled to, if they are.
    pub fn spill_dir(&self) -> Option<&Path> {
        self.spill.as_deref()
    }

    /// Windows in batch `i` (its first dimension; nothing is read).
    ///
    /// # Errors
    /// A batch of rank 0 (not a batch of windows).
    pub fn windows_in(&self, i: usize) -> Result<usize, PipelineError> {
        let first = match &self.batches[i] {
            Batch::Resident(t) => t.dims().first().copied(),
            Batch::Spilled(t) => t.shape().first().copied(),
        };
        first.ok_or_else(|| PipelineError::Calibration(format!("hidden batch {i} has rank 0")))
    }

    /// All windows.
    ///
    /// # Errors
    /// As [`HiddenStates::windows_in`].
    pub fn windows(&self) -> Result<usize, PipelineError> {
        (0..self.len()).map(|i| self.windows_in(i)).sum()
    }

    /// Batch `i` widened to f32 on `device` (read from its file when spilled).
    ///
    /// # Errors
    /// A failed read of a spilled batch, naming its file.
    pub fn batch_f32(&self, i: usize, device: &Device) -> Result<Tensor, PipelineError> {
        match &self.batches[i] {
            Batch::Resident(t) => Ok(t.to_dtype(DType::F32)?),
            Batch::Spilled(t) => Ok(Tensor::from_vec(t.read()?, t.shape(), device)?),
        }
    }

    /// Batch `i` in its dtype on `device`.
    fn batch(&self, i: usize, device: &Device) -> Result<Tensor, PipelineError> {
        match &self.batches[i] {
            Batch::Resident(t) => Ok(t.clone()),
            Batch::Spilled(t) => Ok(self.batch_f32(i, device)?.to_dtype(stored_dtype(t)?)?),
        }
    }

    /// Appends a batch: in memory, or written to its file in the spill directory.
    ///
    /// # Errors
    /// Write errors, naming the file.
    pub fn push(&mut self, values: Tensor) -> Result<(), PipelineError> {
        let batch = self.kept(self.len(), values)?;
        self.batches.push(batch);
        Ok(())
    }

    /// Replaces batch `i` by `values`: in memory, or written to its file in the spill
    /// directory (atomically; the previous file stays readable where it is linked).
    ///
    /// # Errors
    /// Write errors, naming the file.
    pub fn set(&mut self, i: usize, values: Tensor) -> Result<(), PipelineError> {
        self.batches[i] = self.kept(i, values)?;
        Ok(())
    }

    /// `values` as batch `i` is kept: in memory, or in its file in the spill directory.
    fn kept(&self, i: usize, values: Tensor) -> Result<Batch, PipelineError> {
        Ok(match &self.spill {
            None => Batch::Resident(values),
            Some(dir) => Batch::Spilled(write_batch(dir, i, &values)?),
        })
    }

    /// Keeps the batches in `spill` (a directory, created if missing) or, for `None`, in
    /// memory; batches already where they belong stay as they are.
    ///
    /// # Errors
    /// Read and write errors, naming the file.
    pub fn keep_in(&mut self, spill: Option<&Path>, device: &Device) -> Result<(), PipelineError> {
        if let Some(dir) = spill {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        for i in 0..self.len() {
            let moved = match (&self.batches[i], spill) {
                (Batch::Spilled(_), None) => Batch::Resident(self.batch(i, device)?),
                (Batch::Resident(t), Some(dir)) => Batch::Spilled(write_batch(dir, i, t)?),
                _ => continue,
            };
            self.batches[i] = moved;
        }
        self.spill = spill.map(Path::to_path_buf);
        Ok(())
    }

    /// Saves every batch in the directory `dir` (which must exist): a spilled batch by a
    /// hard link to its file (a copy across file systems), one in memory written, one
    /// batch at a time.
    ///
    /// # Errors
    /// Write errors, naming the file.
    pub fn save(&self, dir: &Path) -> Result<(), PipelineError> {
        for (i, batch) in self.batches.iter().enumerate() {
            let to = batch_path(dir, i);
            match batch {
                Batch::Resident(t) => {
                    write_batch(dir, i, t)?;
                }
                Batch::Spilled(t) => {
                    if fs::hard_link(t.path(), &to).is_err() {
                        fs::copy(t.path(), &to).map_err(|e| io_error(&to, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The batches saved in `dir` by [`HiddenStates::save`], left in their files (read
    /// when used; the files stay readable after they are removed).
    ///
    /// # Errors
    /// No batch files, a missing batch, a file without an f32 or bf16 tensor `hidden`,
    /// naming the file.
    pub fn open(dir: &Path) -> Result<Self, PipelineError> {
        let mut batches = Vec::new();
        loop {
            let path = batch_path(dir, batches.len());
            if !path.exists() {
                break;
            }
            batches.push(Batch::Spilled(read_batch(&path)?));
        }
        if batches.is_empty() {
            return Err(io_error(&batch_path(dir, 0), "no hidden states saved"));
        }
        Ok(HiddenStates {
            batches,
            spill: None,
        })
    }
}

/// The dtype of a batch file (f32 or bf16).
fn stored_dtype(t: &StoredTensor) -> Result<DType, PipelineError> {
    match t.encoding() {
        Encoding::Safetensors(Dtype::F32) => Ok(DType::F32),
        Encoding::Safetensors(Dtype::BF16) => Ok(DType::BF16),
        other => Err(io_error(
            t.path(),
            format!("tensor `{TENSOR}` is {other:?}, expected F32 or BF16"),
        )),
    }
}

/// Writes batch `i` to its file in `dir` (atomically) and opens it.
fn write_batch(dir: &Path, i: usize, values: &Tensor) -> Result<StoredTensor, PipelineError> {
    let path = batch_path(dir, i);
    atomic_fs::write_with(&path, |partial| {
        safetensors::serialize_to_file([(TENSOR, values)], None, partial)
            .map_err(|e| io_error(partial, e))
    })?;
    read_batch(&path)
}

/// The tensor of the batch file `path`, left in the file.
fn read_batch(path: &Path) -> Result<StoredTensor, PipelineError> {
    let t = llama_io::stored_tensors(path)?
        .remove(TENSOR)
        .ok_or_else(|| io_error(path, format!("no tensor `{TENSOR}`")))?;
    stored_dtype(&t)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(dtype: DType) -> Vec<Tensor> {
        (0..3)
            .map(|b| {
                let values: Vec<f32> = (0..2 * 5 * 4).map(|v| (v + 100 * b) as f32 / 7.0).collect();
                Tensor::from_vec(values, (2, 5, 4), &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            })
            .collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Spilled, saved, reopened and brought back: the same values in the same dtype, and
    /// a batch replaced while spilled leaves the saved copy as it was.
    #[test]
    fn spilled_batches_keep_their_values_and_dtype() {
        for dtype in [DType::F32, DType::BF16] {
            let dir = tempfile::tempdir().unwrap();
            let original = batches(dtype);
            let mut hidden = HiddenStates::resident(original.clone());
            hidden
                .keep_in(Some(&dir.path().join("spill")), &Device::Cpu)
                .unwrap();
            assert_eq!(hidden.windows().unwrap(), 6);
            assert!(batch_path(&dir.path().join("spill"), 2).exists());
            for (i, t) in original.iter().enumerate() {
                assert_eq!(hidden.batch(i, &Device::Cpu).unwrap().dtype(), dtype);
                assert_eq!(
                    values(&hidden.batch_f32(i, &Device::Cpu).unwrap()),
                    values(t)
                );
            }

            let saved = dir.path().join("saved");
            fs::create_dir(&saved).unwrap();
            hidden.save(&saved).unwrap();
            hidden.set(1, original[0].clone()).unwrap();
            assert_eq!(
                values(&hidden.batch_f32(1, &Device::Cpu).unwrap()),
                values(&original[0])
            );

            let mut reopened = HiddenStates::open(&saved).unwrap();
            assert_eq!(reopened.len(), 3);
            reopened.keep_in(None, &Device::Cpu).unwrap();
            for (i, t) in original.iter().enumerate() {
                let back = reopened.batch(i, &Device::Cpu).unwrap();
                assert_eq!(back.dtype(), dtype);
                assert_eq!(values(&back), values(t), "batch {i}, {dtype:?}");
            }
        }
    }

    #[test]
    fn opening_a_directory_without_batches_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = HiddenStates::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("batch-0000.safetensors"), "{err}");
        fs::write(batch_path(dir.path(), 0), b"not safetensors").unwrap();
        let err = HiddenStates::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("batch-0000.safetensors"), "{err}");
    }
}
