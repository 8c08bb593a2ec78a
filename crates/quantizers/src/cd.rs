//! Coordinate descent refinement (the MagR paper's OPTQ-dagger, COMQ family).

use faer::{Accum, Mat, MatMut, MatRef, Par, linalg::matmul::matmul};
use rayon::prelude::*;

use crate::error::check_shape;
use crate::{Grid, LayerProblem, Optq, QuantError, QuantizedLinear, Quantizer};

/// Order in which a sweep visits the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOrder {
    /// Inputs `0, 1, ..., in - 1` for every output, as in the MagR reference code.
    Natural,
    /// COMQ's greedy order: each output `j` visits its inputs by decreasing
    /// `|W0_ij| * sqrt(H_ii)` (`|w| * ||x_i||`), ties in input order.
    Greedy,
}

/// OPTQ followed by `sweeps` Gauss-Seidel sweeps of [`refine`] on the objective
/// `tr((W0 - Q)^T (H + lambda I) (W0 - Q))`, with the grids of the OPTQ result fixed and
/// the ORIGINAL weights `W0` (the problem's target) as the target.
///
/// `lambda` (default `0.75 mean(diag H)`, the MagR reference) makes the objective differ
/// from the layer loss (`lambda = 0`): with the default, a sweep can raise the layer
/// loss. Keep the refinement opt-in and measure; `lambda = 0` minimises the layer loss
/// itself.
#[derive(Debug, Clone, Copy)]
pub struct CoordinateDescent {
    /// The OPTQ run that gives the starting point and the grids (and the parallelism).
    pub optq: Optq,
    /// Number of sweeps (reference: 1 after every OPTQ; 30 at 2 bits).
    pub sweeps: usize,
    /// `lambda`; `None` = [`reference_lambda`].
    pub lambda: Option<f64>,
    /// Visiting order.
    pub order: SweepOrder,
}

impl Quantizer for CoordinateDescent {
    fn quantize(&self, problem: &LayerProblem<'_>) -> Result<QuantizedLinear, QuantError> {
        let mut q = self.optq.quantize(problem)?;
        refine(
            &mut q,
            problem,
            self.lambda,
            self.order,
            self.sweeps,
            self.optq.par,
        )?;
        Ok(q)
    }
}

/// The reference damping of the sweeps, `0.75 * mean(diag H)`.
pub fn reference_lambda(h: MatRef<'_, f32>) -> f64 {
    0.75 * (0..h.nrows()).map(|i| h[(i, i)] as f64).sum::<f64>() / h.nrows().max(1) as f64
}

/// Runs `sweeps` coordinate-descent sweeps on `q`, grids fixed: each step sets the code
/// of input `i` in output `j` to the grid point nearest the exact minimiser of
/// `f(Q) = tr((W0 - Q)^T A (W0 - Q))`, `A = H + lambda I`, over that one entry:
/// with `E = W0 - Q`, `Q_ij = W0_ij + (sum_{k != i} A_ik E_kj) / A_ii`. `f` is a convex
/// quadratic in that entry, so the nearest grid point (after the clamp, the nearest
/// in range) minimises it over the grid and a step never increases `f`. Outputs are
/// independent (`f` is a sum over columns), so only the order within a column matters.
/// Inputs with `A_ii = 0` (dead, no damping) do not enter `f` and keep their codes.
///
/// `R = A E` is kept current: natural order in blocks of 128 inputs with one product per
/// block (as OPTQ's lazy batch update); greedy order, whose order differs per output, by
/// rank-one updates, outputs in parallel. Codes, dequantized weights and the layer loss
/// of `q` are updated.
///
/// # Errors
/// The problem is invalid or its shape differs from `q`'s; `lambda` negative or not finite.
pub fn refine(
    q: &mut QuantizedLinear,
    problem: &LayerProblem<'_>,
    lambda: Option<f64>,
    order: SweepOrder,
    sweeps: usize,
    par: Par,
) -> Result<(), QuantError> {
    problem.validate()?;
    check_shape("weights", problem.weights, q.inputs(), q.outputs())?;
    let (w0, h) = (problem.target(), problem.hessian);
    let lambda = lambda.unwrap_or_else(|| reference_lambda(h));
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(QuantError::Parameter(format!(
            "lambda must be finite and >= 0, got {lambda}"
        )));
    }
    if sweeps == 0 {
        return Ok(());
    }
    let n = q.inputs();
    let a = Mat::<f32>::from_fn(n, n, |i, k| {
        h[(i, k)] + if i == k { lambda as f32 } else { 0.0 }
    });
    let grids: Vec<Grid> = q.grids().to_vec();
    let g_idx: Vec<u32> = q.g_idx().to_vec();
    let state = Sweeps {
        a: &a,
        w0,
        grids: &grids,
        g_idx: &g_idx,
        outputs: q.outputs(),
        sweeps,
        par,
    };
    match order {
        SweepOrder::Natural => state.natural(q),
        SweepOrder::Greedy => state.greedy(q, h),
    }
    q.refresh(problem, par);
    Ok(())
}

/// The fixed data of a refinement.
struct Sweeps<'a> {
    a: &'a Mat<f32>,
    w0: MatRef<'a, f32>,
    grids: &'a [Grid],
    g_idx: &'a [u32],
    outputs: usize,
    sweeps: usize,
    par: Par,
}

/// One output of the greedy sweep: its index, `E[:, j]`, `R[:, j]` and codes.
type GreedyColumn<'c> = (usize, ((&'c mut [f32], &'c mut [f32]), &'c mut [u8]));

/// Inputs per block of the natural-order sweep.
const BLOCK: usize = 128;

impl Sweeps<'_> {
    /// The grid of input `i` in output `j`.
    fn grid(&self, i: usize, j: usize) -> Grid {
        self.grids[self.g_idx[i] as usize * self.outputs + j]
    }

    /// One coordinate step: the code minimising `f` over entry `(i, j)` and the new
    /// `E_ij`, given `r = (A E)_ij` and the current `e = E_ij`.
    #[inline]
    fn step(&self, i: usize, j: usize, aii: f32, r: f32, e: f32) -> (u32, f32) {
        let w0 = self.w0[(i, j)];
        let grid = self.grid(i, j);
        let code = grid.code(w0 + (r - aii * e) / aii);
        (code, w0 - grid.value(code))
    }

    /// Natural order, all outputs together, transposed (`Et`, `Rt`: outputs x inputs) so
    /// that one input's entries are contiguous. Per block of inputs: `Rb` holds `Rt`'s
    /// block columns plus the updates of the block's earlier inputs; after the block,
    /// `Rt += Delta A[block, :]` (one product keeps `R = A E` exact for every input).
    fn natural(&self, q: &mut QuantizedLinear) {
        let (n, m) = (self.a.nrows(), self.outputs);
        let mut et = Mat::<f32>::from_fn(m, n, |j, i| self.w0[(i, j)] - q.dequantized()[(i, j)]);
        let mut rt = Mat::<f32>::zeros(m, n);
        matmul(
            rt.as_mut(),
            Accum::Replace,
            et.as_ref(),
            self.a.as_ref(),
            1.0,
            self.par,
        );
        let codes = q.codes_mut();
        for _ in 0..self.sweeps {
            for i1 in (0..n).step_by(BLOCK) {
                let i2 = (i1 + BLOCK).min(n);
                let mut rb = rt.as_ref().subcols(i1, i2 - i1).to_owned();
                let mut delta = Mat::<f32>::zeros(m, i2 - i1);
                for i in i1..i2 {
                    let aii = self.a[(i, i)];
                    if aii <= 0.0 {
                        continue;
                    }
                    let (e, r, d) = (
                        et.col_as_slice_mut(i),
                        rb.col_as_slice(i - i1),
                        delta.col_as_slice_mut(i - i1),
                    );
                    for j in 0..m {
                        let (code, e_new) = self.step(i, j, aii, r[j], e[j]);
                        d[j] = e_new - e[j];
                        e[j] = e_new;
                        codes[j * n + i] = code as u8;
                    }
                    let d = delta.col_as_slice(i - i1);
                    for k in i + 1..i2 {
                        let aik = self.a[(i, k)];
                        for (rk, dj) in rb.col_as_slice_mut(k - i1).iter_mut().zip(d) {
                            *rk += aik * dj;
                        }
                    }
                }
                matmul(
                    rt.as_mut(),
                    Accum::Add,
                    delta.as_ref(),
                    self.a.as_ref().subrows(i1, i2 - i1),
                    1.0,
                    self.par,
                );
            }
        }
    }

    /// Greedy order: each output on its own, in parallel, `r = A e` kept by rank-one
    /// updates `r += A[:, i] (e_new - e_old)` when a code changes.
    fn greedy(&self, q: &mut QuantizedLinear, h: MatRef<'_, f32>) {
        let (n, m) = (self.a.nrows(), self.outputs);
        let deq = q.dequantized();
        let mut e: Vec<f32> = (0..m)
            .flat_map(|j| (0..n).map(move |i| (i, j)))
            .map(|(i, j)| self.w0[(i, j)] - deq[(i, j)])
            .collect();
        let mut r = vec![0.0f32; n * m];
        matmul(
            MatMut::from_column_major_slice_mut(&mut r, n, m),
            Accum::Replace,
            self.a.as_ref(),
            MatRef::from_column_major_slice(&e, n, m),
            1.0,
            self.par,
        );
        let norms: Vec<f32> = (0..n).map(|i| h[(i, i)].max(0.0).sqrt()).collect();
        let run = |(j, ((e, r), codes)): GreedyColumn<'_>| {
            let score = |i: usize| self.w0[(i, j)].abs() * norms[i];
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&x, &y| score(y).total_cmp(&score(x)));
            for _ in 0..self.sweeps {
                for &i in &order {
                    let aii = self.a[(i, i)];
                    if aii <= 0.0 {
                        continue;
                    }
                    let (code, e_new) = self.step(i, j, aii, r[i], e[i]);
                    codes[i] = code as u8;
                    let d = e_new - e[i];
                    if d != 0.0 {
                        e[i] = e_new;
                        for (rk, ak) in r.iter_mut().zip(self.a.col_as_slice(i)) {
                            *rk += ak * d;
                        }
                    }
                }
            }
        };
        let codes = q.codes_mut();
        match self.par {
            Par::Seq => e
                .chunks_mut(n)
                .zip(r.chunks_mut(n))
                .zip(codes.chunks_mut(n))
                .enumerate()
                .for_each(run),
            Par::Rayon(_) => e
                .par_chunks_mut(n)
                .zip(r.par_chunks_mut(n))
                .zip(codes.par_chunks_mut(n))
                .enumerate()
                .for_each(run),
        }
    }
}
