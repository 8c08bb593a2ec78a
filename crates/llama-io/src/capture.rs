//! Receiving the inputs of a block's linear layers during
//! [`Model::run_block_capturing`](crate::Model::run_block_capturing).
//!
//! A block has four distinct inputs ([`LinearInput`]); q/k/v share one and gate/up
//! share one. A sink either keeps `X` or folds it into `H = X^T X` right away
//! ([`XtxAccumulator`]), so calibration never holds all of `X`.

use candle_core::Tensor;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use crate::config::LlamaConfig;
use crate::error::{LlamaIoError, Result};
use crate::gemm::gemm;
use crate::host::{FollowPar, with_host_slice};
use crate::linear::{LinearInput, LinearKind};

/// Receives the input `X` (`[tokens, width]`, f32, contiguous, on the model's
/// device) of the linear layers that read `input`.
pub trait InputSink {
    /// Called once per distinct input during a block's forward pass.
    fn consume(&mut self, input: LinearInput, x: &Tensor) -> Result<()>;
}

impl<F: FnMut(LinearInput, &Tensor) -> Result<()>> InputSink for F {
    fn consume(&mut self, input: LinearInput, x: &Tensor) -> Result<()> {
        self(input, x)
    }
}

/// `h += X^T X` for `x` `[tokens, width]` and `h` (`width x width`, row-major,
/// symmetric). The product is formed in f32 (on the CPU its lower triangle by faer,
/// mirrored, run as `par` says; candle's full product on other devices); the running
/// sum is kept in f64.
///
/// # Errors
/// `x` not a matrix of f32, `h` not `width x width`.
pub fn accumulate_xtx(x: &Tensor, h: &mut [f64], par: Par) -> Result<()> {
    let (tokens, width) = x.dims2()?;
    if h.len() != width * width {
        return Err(LlamaIoError::InvalidArgument(format!(
            "X^T X buffer has {} values, expected {width} x {width}",
            h.len()
        )));
    }
    if x.device().is_cpu() {
        return with_host_slice(x, |x| {
            let x = MatRef::from_row_major_slice(x, tokens, width);
            // The lower triangle only (half the work); mirrored, so `H` is exactly
            // symmetric.
            let mut product = Mat::<f32>::zeros(width, width);
            triangular::matmul(
                product.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                x.transpose(),
                BlockStructure::Rectangular,
                x,
                BlockStructure::Rectangular,
                1.0,
                par,
            );
            for (i, row) in h.chunks_exact_mut(width).enumerate() {
                for (k, acc) in row.iter_mut().enumerate() {
                    let (a, b) = if k <= i { (i, k) } else { (k, i) };
                    *acc += f64::from(product[(a, b)]);
                }
            }
        });
    }
    accumulate_xtx_tensors(x, h, par)
}

/// Entries of `H` per task when a device's product is folded into the host sum.
const FOLD_CHUNK: usize = 1 << 16;

/// [`accumulate_xtx`] with the product formed by candle on `x`'s device, folded into
/// `h` in parallel as `par` says (each entry's sum is the same under any `par`).
fn accumulate_xtx_tensors(x: &Tensor, h: &mut [f64], par: Par) -> Result<()> {
    let xtx = gemm(&x.t()?, x)?;
    with_host_slice(&xtx, |product| {
        h.par_chunks_mut(FOLD_CHUNK)
            .zip(product.par_chunks(FOLD_CHUNK))
            .follow(par)
            .for_each(|(acc, p)| {
                acc.iter_mut()
                    .zip(p)
                    .for_each(|(acc, &p)| *acc += f64::from(p))
            });
    })
}

/// Accumulates `H = X^T X` (f64, row-major) for each of the four inputs of a block
/// over any number of batches, and counts the tokens (rows of `X`) seen. Each batch
/// is folded in by [`accumulate_xtx`] with the accumulator's `par`. A sum is allocated
/// at the first batch of its input, so capturing one input holds one `H` (on a 7B
/// model the MLP's is 11008² f64, 0.9 GiB).
#[derive(Debug, Clone, PartialEq)]
pub struct XtxAccumulator {
    sums: [Vec<f64>; 4],
    widths: [usize; 4],
    tokens: [usize; 4],
    par: Par,
}

impl XtxAccumulator {
    /// An accumulator for the linear layers of `config`, nothing summed yet; the
    /// products of each batch run as `par` says.
    pub fn new(config: &LlamaConfig, par: Par) -> Self {
        let widths = LinearInput::ALL.map(|input| input.width(config));
        XtxAccumulator {
            sums: Default::default(),
            widths,
            tokens: [0; 4],
            par,
        }
    }

    /// `H` of the input read by layer `kind` (`in x in`, row-major; the same buffer
    /// for q/k/v and for gate/up); empty until a batch of that input was consumed.
    pub fn xtx(&self, kind: LinearKind) -> &[f64] {
        &self.sums[kind.input().index()]
    }

    /// Width (`in`) of the input read by layer `kind`.
    pub fn width(&self, kind: LinearKind) -> usize {
        self.widths[kind.input().index()]
    }

    /// Number of tokens (rows of `X`) accumulated for the input read by `kind`.
    pub fn tokens(&self, kind: LinearKind) -> usize {
        self.tokens[kind.input().index()]
    }

    /// Takes the sum of `input` out (zeros if no batch of it was consumed), leaving
    /// nothing summed behind.
    pub fn take(&mut self, input: LinearInput) -> Vec<f64> {
        let w = self.widths[input.index()];
        self.tokens[input.index()] = 0;
        let sum = std::mem::take(&mut self.sums[input.index()]);
        if sum.is_empty() {
            vec![0.0; w * w]
        } else {
            sum
        }
    }
}

impl InputSink for XtxAccumulator {
    fn consume(&mut self, input: LinearInput, x: &Tensor) -> Result<()> {
        let i = input.index();
        if self.sums[i].is_empty() {
            self.sums[i] = vec![0.0; self.widths[i] * self.widths[i]];
        }
        accumulate_xtx(x, &mut self.sums[i], self.par)?;
        self.tokens[i] += x.dim(0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The faer path and the candle path give the same sums (a width whose `H` spans
    /// several fold tasks), and the candle path's fold the same bits under any `Par`.
    #[test]
    fn host_product_matches_the_tensor_path() {
        let width = 300;
        assert!(width * width > FOLD_CHUNK);
        let x = Tensor::randn(0f32, 1.0, (37, width), &Device::Cpu).unwrap();
        let start = vec![1.0; width * width];
        let (mut host, mut tensors, mut serial) = (start.clone(), start.clone(), start);
        accumulate_xtx(&x, &mut host, Par::rayon(0)).unwrap();
        accumulate_xtx_tensors(&x, &mut tensors, Par::rayon(0)).unwrap();
        accumulate_xtx_tensors(&x, &mut serial, Par::Seq).unwrap();
        for (a, b) in host.iter().zip(&tensors) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(tensors, serial);
    }
}
