//! The compute backend: where the heavy per-layer work of a run happens (accumulating
//! `H = X^T X`, MagR's proximal-gradient iterations, OPTQ's factorisation and updates,
//! coordinate-descent sweeps).
//!
//! The pipeline, the preprocessors and the methods call the backend for that work and
//! never a kernel directly, so another backend (a GPU one behind a feature) is one
//! implementation of [`ComputeBackend`] passed in [`crate::PipelineSettings`], with no
//! change to the pipeline. [`Cpu`] (faer and rayon, with the run's explicit `Par`) is the
//! default; [`crate::CandleBackend`] runs the same work in candle's tensor operations on
//! any candle device.

use std::fmt;

use candle_core::Tensor;
use faer::{Mat, MatRef, Par};
use llama_io::{InputSink, LinearInput, Model, XtxAccumulator};
use prox_opt::{MagrOptions, MagrReport};
use quantizers::{CoordinateDescent, Optq, Quantizer};

use crate::error::PipelineError;
use crate::hidden::HiddenStates;

/// Which calibration windows form an `H`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Every calibration window.
    All,
    /// The last calibration window only (MagR's matrix in the reference code).
    Last,
    /// Every [`HELD_OUT_EVERY`]-th window (the 4th, 8th, ...): the held-out part of the
    /// calibration set; the others are the fitting part.
    HeldOut,
}

/// One calibration window in this many is held out ([`Windows::HeldOut`]).
pub const HELD_OUT_EVERY: usize = 4;

/// The heavy per-layer operations of a run. Every result must be what the CPU
/// implementation computes, up to the rounding of a different summation order.
pub trait ComputeBackend: fmt::Debug + Send + Sync {
    /// A short name for logs and reports (`cpu`).
    fn name(&self) -> &'static str;

    /// `H` (f32, in x in, exactly symmetric) of each of `inputs` of `block`, in that
    /// order, from the block as `model` holds it now, over the calibration hidden states
    /// `hidden` (one tensor `[batch, seqlen, hidden]` per batch, read one batch at a
    /// time) or only their `windows`.
    ///
    /// The default runs the block's forward pass on the model's device over the batches
    /// (each widened to f32) with an [`XtxAccumulator`] taking the wanted inputs
    /// (products by faer on the CPU, by candle elsewhere), then gives each `H` in f32.
    ///
    /// # Errors
    /// Errors of the forward pass.
    fn hessians(
        &self,
        model: &Model,
        block: usize,
        hidden: &HiddenStates,
        inputs: &[LinearInput],
        windows: Windows,
        par: Par,
    ) -> Result<Vec<Mat<f32>>, PipelineError> {
        let mut acc = XtxAccumulator::new(model.config(), par);
        let mut wanted = |input: LinearInput, x: &Tensor| {
            if inputs.contains(&input) {
                acc.consume(input, x)
            } else {
                Ok(())
            }
        };
        let device = model.device();
        match windows {
            Windows::Last => {
                let b = hidden.len().checked_sub(1).ok_or_else(|| {
                    PipelineError::Calibration("no calibration hidden states".into())
                })?;
                let h = hidden.batch_f32(b, device)?;
                let rows = h.dim(0)?;
                let last = h.narrow(0, rows - 1, 1)?;
                model.run_block_capturing(block, &last, par, &mut wanted)?;
            }
            Windows::HeldOut => {
                let mut first = 0;
                for b in 0..hidden.len() {
                    let rows = hidden.windows_in(b)?;
                    let held =
                        (0..rows).filter(|i| (first + i) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1);
                    if held.clone().next().is_some() {
                        let h = hidden.batch_f32(b, device)?;
                        for i in held {
                            let window = h.narrow(0, i, 1)?;
                            model.run_block_capturing(block, &window, par, &mut wanted)?;
                        }
                    }
                    first += rows;
                }
            }
            Windows::All => {
                for b in 0..hidden.len() {
                    let h = hidden.batch_f32(b, device)?;
                    model.run_block_capturing(block, &h, par, &mut wanted)?;
                }
            }
        }
        // Converted to f32 once per input, shared by the layers that read it.
        Ok(inputs
            .iter()
            .map(|&input| {
                let n = input.width(model.config());
                let h = acc.take(input);
                Mat::from_fn(n, n, |i, k| h[i * n + k] as f32)
            })
            .collect())
    }

    /// MagR on one layer ([`prox_opt::magr`]'s contract).
    ///
    /// # Errors
    /// MagR's errors.
    fn magr(
        &self,
        w0: MatRef<'_, f32>,
        h: MatRef<'_, f32>,
        options: &MagrOptions,
    ) -> Result<(Mat<f32>, MagrReport), PipelineError>;

    /// OPTQ with these settings, as a quantizer running here.
    fn optq<'a>(&'a self, optq: Optq) -> Box<dyn Quantizer + 'a>;

    /// OPTQ followed by coordinate-descent sweeps, as a quantizer running here.
    fn coordinate_descent<'a>(&'a self, cd: CoordinateDescent) -> Box<dyn Quantizer + 'a>;
}

/// The CPU backend: faer for the linear algebra, parallel as the run's `Par` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu;

impl ComputeBackend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn magr(
        &self,
        w0: MatRef<'_, f32>,
        h: MatRef<'_, f32>,
        options: &MagrOptions,
    ) -> Result<(Mat<f32>, MagrReport), PipelineError> {
        Ok(prox_opt::magr(w0, h, options)?)
    }

    fn optq<'a>(&'a self, optq: Optq) -> Box<dyn Quantizer + 'a> {
        Box::new(optq)
    }

    fn coordinate_descent<'a>(&'a self, cd: CoordinateDescent) -> Box<dyn Quantizer + 'a> {
        Box::new(cd)
    }
}
