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
    /// The last window of the fitting part (not held out): what a last-window setting is
    /// fitted on while settings are chosen per layer.
    LastNotHeldOut,
}

impl Windows {
    /// The indices of the windows this selects out of `windows` calibration windows, in
    /// order; `None` for [`Windows::All`] (every window, run batch by batch).
    pub fn indices(self, windows: usize) -> Option<Vec<usize>> {
        let held = |i: &usize| i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1;
        match self {
            Windows::All => None,
            Windows::Last => Some(windows.checked_sub(1).into_iter().collect()),
            Windows::HeldOut => Some((0..windows).filter(held).collect()),
            Windows::LastNotHeldOut => {
                Some((0..windows).rev().find(|i| !held(i)).into_iter().collect())
            }
        }
    }

    /// The windows a setting whose `H` comes from these is fitted on while settings are
    /// chosen per layer: `None` for [`Windows::All`], whose fitting `H` is
    /// `H_all - H_held`; [`Windows::LastNotHeldOut`] for [`Windows::Last`].
    pub fn fitting(self) -> Option<Windows> {
        match self {
            Windows::All => None,
            Windows::Last | Windows::LastNotHeldOut => Some(Windows::LastNotHeldOut),
            Windows::HeldOut => Some(Windows::HeldOut),
        }
    }
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
        match windows.indices(hidden.windows()?) {
            None => {
                for b in 0..hidden.len() {
                    let h = hidden.batch_f32(b, device)?;
                    model.run_block_capturing(block, &h, par, &mut wanted)?;
                }
            }
            Some(indices) => {
                if indices.is_empty() {
                    return Err(PipelineError::Calibration(format!(
                        "no calibration window for an H of {windows:?}"
                    )));
                }
                let mut first = 0;
                for b in 0..hidden.len() {
                    let rows = hidden.windows_in(b)?;
                    let in_batch = indices
                        .iter()
                        .filter(|&&i| (first..first + rows).contains(&i))
                        .map(|i| i - first);
                    if in_batch.clone().next().is_some() {
                        let h = hidden.batch_f32(b, device)?;
                        for i in in_batch {
                            let window = h.narrow(0, i, 1)?;
                            model.run_block_capturing(block, &window, par, &mut wanted)?;
                        }
                    }
                    first += rows;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Held out: every 4th window; the last not held out: the largest index that is
        /// not; the last: the last; all: none listed (every window, batch by batch).
        #[test]
        fn windows_select_what_they_name(n in 0usize..40) {
            let held = Windows::HeldOut.indices(n).unwrap();
            prop_assert_eq!(&held, &(0..n).filter(|i| i % 4 == 3).collect::<Vec<_>>());
            let last_fit = Windows::LastNotHeldOut.indices(n).unwrap();
            let expected = (0..n).filter(|i| !held.contains(i)).max();
            prop_assert_eq!(last_fit, expected.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(Windows::Last.indices(n).unwrap(), n.checked_sub(1).into_iter().collect::<Vec<_>>());
            prop_assert_eq!(Windows::All.indices(n), None);
            prop_assert_eq!(Windows::Last.fitting(), Some(Windows::LastNotHeldOut));
            prop_assert_eq!(Windows::All.fitting(), None);
        }
    }
}
