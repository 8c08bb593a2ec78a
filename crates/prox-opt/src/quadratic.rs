//! The smooth part of MagR: `f(W) = 1/2 tr((W - W0)^T H (W - W0)) = 1/2 ||X (W - W0)||_F^2`.

use std::cell::RefCell;

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par, linalg::matmul::matmul, unzip, zip};
use rayon::prelude::*;

use crate::error::{check_finite, check_shape};
use crate::prox::{BLOCK_COLS, for_each_column_block};
use crate::{ProxError, Smooth, largest_eigenvalue};

/// Relative tolerance of the Lanczos estimate of `lambda_max(H)` used by [`Quadratic::new`].
pub const LAMBDA_MAX_TOLERANCE: f64 = 1e-6;

/// `f(W) = 1/2 tr((W - W0)^T H (W - W0))` with `H` (in x in, symmetric PSD) and `W0`
/// (in x out); gradient `H (W - W0)`, Lipschitz constant `lambda_max(H)`.
///
/// The gradient is computed as one product `H D` with `D = W - W0` (not `H W - H W0`,
/// which loses precision to cancellation as `W` approaches `W0`), and the value as
/// `1/2 <D, H D>` in f64 from the same product, so a solver pays one `in x in x out`
/// product per iteration and nothing else of that order.
pub struct Quadratic<'a> {
    h: MatRef<'a, f32>,
    w0: MatRef<'a, f32>,
    lipschitz: f64,
    diff: RefCell<Mat<f32>>,
}

impl<'a> Quadratic<'a> {
    /// Builds `f`, estimating `lambda_max(H)` by Lanczos to [`LAMBDA_MAX_TOLERANCE`].
    ///
    /// # Errors
    /// Shapes that do not fit (`H` square, `W0` with as many rows as `H`), non-finite entries.
    pub fn new(h: MatRef<'a, f32>, w0: MatRef<'a, f32>, par: Par) -> Result<Self, ProxError> {
        let lambda = largest_eigenvalue(h, LAMBDA_MAX_TOLERANCE, par)?.value;
        Self::with_lipschitz(h, w0, lambda)
    }

    /// Builds `f` with a caller-supplied Lipschitz constant (e.g. `lambda_max` known
    /// from elsewhere). Steps `1/L` are safe for any `L > lambda_max / 2`; monotone
    /// decrease of proximal gradient needs `L > lambda_max / 2`, and the convergence
    /// rate bounds assume `L >= lambda_max`.
    pub fn with_lipschitz(
        h: MatRef<'a, f32>,
        w0: MatRef<'a, f32>,
        lipschitz: f64,
    ) -> Result<Self, ProxError> {
        let n = h.nrows();
        check_shape("H", h, n, n)?;
        check_shape("W0", w0, n, w0.ncols())?;
        check_finite("H", h)?;
        check_finite("W0", w0)?;
        if !(lipschitz.is_finite() && lipschitz >= 0.0) {
            return Err(ProxError::Parameter(format!(
                "Lipschitz constant must be finite and >= 0, got {lipschitz}"
            )));
        }
        Ok(Self {
            h,
            w0,
            lipschitz,
            diff: RefCell::new(Mat::zeros(n, w0.ncols())),
        })
    }

    /// The Hessian `H`.
    pub fn hessian(&self) -> MatRef<'a, f32> {
        self.h
    }

    /// The anchor `W0`.
    pub fn anchor(&self) -> MatRef<'a, f32> {
        self.w0
    }

    /// `f(W)` and `grad f(W) = H D` (into `grad`) at `W = W0 + D` for a `D = diff` the
    /// caller formed: one product, as [`Smooth::value_and_gradient`].
    pub fn value_and_gradient_at_offset(
        &self,
        diff: MatRef<'_, f32>,
        mut grad: MatMut<'_, f32>,
        par: Par,
    ) -> f64 {
        self.product(diff, grad.rb_mut(), par);
        0.5 * dot(diff, grad.rb(), par)
    }

    /// `grad <- H D`; zeros without the product when `D = 0` (a solve's start at `W0`).
    fn product(&self, diff: MatRef<'_, f32>, mut grad: MatMut<'_, f32>, par: Par) {
        if diff.col_iter().all(|c| c.iter().all(|&v| v == 0.0)) {
            grad.fill(0.0);
        } else {
            matmul(grad, Accum::Replace, self.h, diff, 1.0, par);
        }
    }

    /// Per column `j`: `(w_j - w0_j)^T H (w_j - w0_j) = ||X (w_j - w0_j)||^2`, the output
    /// error of that channel (one product).
    pub fn column_errors(&self, x: MatRef<'_, f32>, par: Par) -> Vec<f64> {
        let mut grad = Mat::<f32>::zeros(x.nrows(), x.ncols());
        self.value_and_gradient(x, grad.as_mut(), par);
        let diff = self.diff.borrow();
        (0..x.ncols())
            .map(|j| {
                let mut acc = 0.0f64;
                zip!(diff.col(j), grad.col(j))
                    .for_each(|unzip!(d, g)| acc += *d as f64 * *g as f64);
                acc
            })
            .collect()
    }
}

impl Smooth for Quadratic<'_> {
    fn shape(&self) -> (usize, usize) {
        (self.w0.nrows(), self.w0.ncols())
    }

    fn value_and_gradient(&self, x: MatRef<'_, f32>, mut grad: MatMut<'_, f32>, par: Par) -> f64 {
        self.gradient(x, grad.rb_mut(), par);
        0.5 * dot(self.diff.borrow().as_ref(), grad.rb(), par)
    }

    fn gradient(&self, x: MatRef<'_, f32>, grad: MatMut<'_, f32>, par: Par) {
        let mut diff = self.diff.borrow_mut();
        let w0 = self.w0;
        for_each_column_block(diff.as_mut(), par, |j0, d| {
            let cols = d.ncols();
            zip!(d, x.subcols(j0, cols), w0.subcols(j0, cols))
                .for_each(|unzip!(d, a, b)| *d = *a - *b);
        });
        self.product(diff.as_ref(), grad, par);
    }

    fn lipschitz(&self) -> f64 {
        self.lipschitz
    }
}

/// `<a, b>` in f64, summed by blocks of [`BLOCK_COLS`] columns (in parallel under
/// `Par::Rayon`) and then over the blocks in order, so the result does not depend on `par`.
fn dot(a: MatRef<'_, f32>, b: MatRef<'_, f32>, par: Par) -> f64 {
    let block = |j0: usize| {
        let cols = BLOCK_COLS.min(a.ncols() - j0);
        (j0..j0 + cols)
            .map(
                |j| match (a.col(j).try_as_col_major(), b.col(j).try_as_col_major()) {
                    (Some(x), Some(y)) => dot_slices(x.as_slice(), y.as_slice()),
                    _ => {
                        let mut acc = 0.0f64;
                        zip!(a.col(j), b.col(j))
                            .for_each(|unzip!(x, y)| acc += f64::from(*x) * f64::from(*y));
                        acc
                    }
                },
            )
            .sum::<f64>()
    };
    let starts = (0..a.ncols()).step_by(BLOCK_COLS);
    let partial: Vec<f64> = match par {
        Par::Seq => starts.map(block).collect(),
        Par::Rayon(_) => starts
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(block)
            .collect(),
    };
    partial.iter().sum()
}

/// `<x, y>` of two slices of one length in f64, over 8 independent lanes (which the
/// compiler vectorises; one running sum would wait on each addition).
fn dot_slices(x: &[f32], y: &[f32]) -> f64 {
    const LANES: usize = 8;
    let (xs, ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f64 = (xs.remainder().iter().zip(ys.remainder()))
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let mut lanes = [0.0f64; LANES];
    for (a, b) in xs.zip(ys) {
        for k in 0..LANES {
            lanes[k] += f64::from(a[k]) * f64::from(b[k]);
        }
    }
    lanes.iter().sum::<f64>() + tail
}
