//! OPTQ (GPTQ, Frantar et al. 2023) with the reference code's options.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{LltError, cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatRef, Par, linalg::matmul::matmul};

use crate::rtn::map_outputs;
use crate::{Grid, GridSpec, LayerProblem, QuantError, QuantizedLinear, Quantizer};

/// OPTQ: quantize the inputs one at a time and spread each rounding error over the
/// inputs not yet quantized, through the upper Cholesky factor `U` of `H^{-1}`
/// (`H^{-1} = U^T U`).
///
/// Step by step as in the reference code (GPTQ's `fasterquant`, which MagR reuses):
/// 1. per channel, grids are fitted to the weights as given;
/// 2. dead inputs (`H_ii = 0`) get `H_ii = 1` and zero weights;
/// 3. static groups: every group's grid is fitted now;
/// 4. act-order: inputs are processed by decreasing `H_ii` (a stable sort);
/// 5. damping `H += damping * mean(diag H) I`; `U` from `H`;
/// 6. blocks of `block_size` inputs: for each input `i`, `q = round(w_i)` on its grid,
///    `err = (w_i - q) / U_ii`, `w_k -= err U_ik` for the later inputs `k` of the block;
///    after the block, one product `W_rest -= Err U_block,rest`. Dynamic groups: a
///    group's grid is fitted when the loop reaches its first input, on the weights as
///    they stand at the start of that input's block (the reference's `W`, which the
///    in-block updates do not touch).
///
/// Numerics: `U` comes from one f64 Cholesky factorisation and one triangular inverse
/// (see `inverse_cholesky_upper`) and is used in f32, as are the weights.
/// `g_idx` follows the reference: under act-order with dynamic groups, input `i`'s group
/// is its processing position divided by the group size.
///
/// GGUF block formats ([`GridSpec::ggml`]): groups are the blocks of 32 inputs (K-quant
/// sub-blocks) and each block's grid is fitted as above (dynamic: when the loop reaches
/// the block, on the error-updated weights; a K-quant super-block's grids together when
/// the loop reaches the super-block, [`GridSpec::fit_span_grids`]), whose weights, for
/// [`crate::GridFit::Weighted`], are the undamped `H_ii` of the block's inputs in
/// processing order (0 for dead inputs, whose weights are zeroed anyway). Act-order with
/// dynamic groups is refused ([`QuantError::GgmlActOrder`]): a GGUF row cannot permute
/// its inputs. Act-order with static groups keeps the natural blocks and is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Optq {
    /// The grid family.
    pub spec: GridSpec,
    /// Inputs per lazy-update block (reference: 128).
    pub block_size: usize,
    /// Relative damping of the diagonal (reference: 0.01).
    pub damping: f64,
    /// Process inputs by decreasing `H_ii`.
    pub act_order: bool,
    /// Fit all group grids before the loop, on the weights as given.
    pub static_groups: bool,
    /// Parallelism of the factorisation and of the products.
    pub par: Par,
}

impl Optq {
    /// The reference relative damping of `H`'s diagonal (GPTQ's `damp_percent`).
    pub const REFERENCE_DAMPING: f64 = 0.01;

    /// The reference settings for a grid: blocks of 128, 1% damping, natural order,
    /// dynamic groups, parallel.
    pub fn new(spec: GridSpec) -> Self {
        Self {
            spec,
            block_size: 128,
            damping: Self::REFERENCE_DAMPING,
            act_order: false,
            static_groups: false,
            par: Par::rayon(0),
        }
    }
}

/// What [`Optq::quantize_swept_by`] hands the column loop (the sweep) for per-channel
/// grids: everything OPTQ decides before its loop.
pub struct OptqSweep<'a> {
    /// The working weights, `out x in`: row `j` is output channel `j`, column `k` the
    /// input processed at position `k` (act-order's permutation applied), dead inputs
    /// zeroed.
    pub weights: Mat<f32>,
    /// `U` (`in x in`, upper triangular, in processing order): `H^{-1} = U^T U` for the
    /// damped `H`, as the loop reads it (`e = (x - q) / U_kk`, row `k` spreads the error).
    pub factor: Mat<f32>,
    /// One grid per output channel.
    pub grids: &'a [Grid],
    /// Columns per lazy block update.
    pub block_size: usize,
}

/// What every form of OPTQ's loop starts from.
struct Prepared {
    /// Per input: `H_ii = 0` (calibration never activates it).
    dead: Vec<bool>,
    /// `perm[k]`: the input processed at position `k`.
    perm: Vec<usize>,
    /// `U`, in processing order.
    u: Mat<f32>,
}

impl Optq {
    /// The checks and the order shared by every form of the loop.
    fn prepare(&self, problem: &LayerProblem<'_>) -> Result<Prepared, QuantError> {
        problem.validate()?;
        if self.block_size == 0 {
            return Err(QuantError::Parameter("block size must be positive".into()));
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(QuantError::Parameter(format!(
                "damping must be finite and >= 0, got {}",
                self.damping
            )));
        }
        let h = problem.hessian;
        let n = h.nrows();
        let dead: Vec<bool> = (0..n).map(|i| h[(i, i)] == 0.0).collect();
        let diag = |i: usize| if dead[i] { 1.0 } else { h[(i, i)] as f64 };
        // perm[k] = the input processed at position k.
        let mut perm: Vec<usize> = (0..n).collect();
        if self.act_order {
            perm.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)));
        }
        let damp = self.damping * (0..n).map(diag).sum::<f64>() / n as f64;
        let u = inverse_cholesky_upper(h, &perm, &dead, damp, self.par)?;
        Ok(Prepared { dead, perm, u })
    }

    /// [`Quantizer::quantize`] with the column loop run by `sweep` (on another device,
    /// for instance), which returns the codes `out x in` row-major in processing order.
    /// The grids (one per output channel, fitted as `quantize` fits them), the order,
    /// `U` and the result are `quantize`'s; only grids per channel of the uniform family
    /// take this path: others run `quantize` itself.
    ///
    /// # Errors
    /// As [`Quantizer::quantize`], and `sweep`'s.
    pub fn quantize_swept_by(
        &self,
        problem: &LayerProblem<'_>,
        sweep: impl FnOnce(OptqSweep<'_>) -> Result<Vec<u8>, QuantError>,
    ) -> Result<QuantizedLinear, QuantError> {
        if self.spec.group_size().is_some() || self.spec.ggml_type().is_some() {
            return self.quantize(problem);
        }
        let Prepared { dead, perm, u } = self.prepare(problem)?;
        let (w, spec) = (problem.weights, self.spec);
        let (n, m) = (w.nrows(), w.ncols());
        let grids: Vec<Grid> = (0..m).map(|j| spec.fit(w.col(j).iter().copied())).collect();
        let weights = Mat::<f32>::from_fn(
            m,
            n,
            |j, k| if dead[perm[k]] { 0.0 } else { w[(perm[k], j)] },
        );
        let swept = sweep(OptqSweep {
            weights,
            factor: u,
            grids: &grids,
            block_size: self.block_size.min(n),
        })?;
        if swept.len() != n * m {
            return Err(QuantError::Parameter(format!(
                "the sweep returned {} codes for {m} x {n}",
                swept.len()
            )));
        }
        let mut codes = vec![0u8; n * m];
        for j in 0..m {
            for (k, &input) in perm.iter().enumerate() {
                codes[j * n + input] = swept[j * n + k];
            }
        }
        Ok(QuantizedLinear::assemble(
            spec,
            codes,
            grids,
            vec![0; n],
            problem,
            self.par,
        ))
    }
}

impl Quantizer for Optq {
    fn quantize(&self, problem: &LayerProblem<'_>) -> Result<QuantizedLinear, QuantError> {
        let (w, h, spec) = (problem.weights, problem.hessian, self.spec);
        if let Some(ty) = spec.ggml_type()
            && self.act_order
            && !self.static_groups
        {
            return Err(QuantError::GgmlActOrder(ty));
        }
        let Prepared { dead, perm, u } = self.prepare(problem)?;
        let (n, m) = (w.nrows(), w.ncols());
        let (gs, groups) = (spec.group_rows(n)?, spec.groups(n)?);
        let span = spec.fit_span(n)?;
        let per_span = span / gs;
        let dynamic_groups = spec.group_size().is_some() && !self.static_groups;

        // The weights of a weighted GGUF fit: undamped H_ii, natural order.
        let fit_weights: Vec<f32> = (0..n).map(|i| h[(i, i)].max(0.0)).collect();
        let weight = |i: usize, j: usize| if dead[i] { 0.0 } else { w[(i, j)] };

        // Grids, [g * m + j]. Per channel: the weights as given; static groups: the
        // weights with dead inputs zeroed; dynamic groups: filled in the loop.
        let mut grids = vec![Grid::default(); groups * m];
        if spec.group_size().is_none() {
            for (j, grid) in grids.iter_mut().enumerate() {
                *grid = spec.fit(w.col(j).iter().copied());
            }
        } else if self.static_groups {
            let mut span_grids = vec![Grid::default(); per_span];
            for s in 0..n.div_ceil(span) {
                let inputs = s * span..((s + 1) * span).min(n);
                let span_grids = &mut span_grids[..inputs.len().div_ceil(gs)];
                for j in 0..m {
                    let values: Vec<f32> = inputs.clone().map(|i| weight(i, j)).collect();
                    spec.fit_span_grids(&values, &fit_weights[inputs.clone()], span_grids);
                    for (k, grid) in span_grids.iter().enumerate() {
                        grids[(s * per_span + k) * m + j] = *grid;
                    }
                }
            }
        }

        // Per channel gs = n, so both forms give group 0.
        let group_at = |k: usize| {
            if self.static_groups {
                perm[k] / gs
            } else {
                k / gs
            }
        };

        // Working weights, transposed and permuted: column k is input perm[k] across all
        // outputs, so every per-input step runs on contiguous memory.
        let mut wp = Mat::<f32>::from_fn(m, n, |j, k| weight(perm[k], j));
        let mut codes = vec![0u8; n * m];
        let bs = self.block_size.min(n);
        let mut err = Mat::<f32>::zeros(m, bs);
        for i1 in (0..n).step_by(bs) {
            let i2 = (i1 + bs).min(n);
            if dynamic_groups {
                for start in (i1..i2).filter(|k| k % span == 0) {
                    let len = span.min(n - start);
                    let block = wp.as_ref().subcols(start, len);
                    let first = start / gs;
                    let grids = &mut grids[first * m..(first + len.div_ceil(gs)) * m];
                    if spec.ggml_type().is_some() {
                        let weights: Vec<f32> = perm[start..start + len]
                            .iter()
                            .map(|&i| fit_weights[i])
                            .collect();
                        fit_span_values(spec, block, &weights, grids, self.par);
                    } else {
                        fit_group(spec, block, grids);
                    }
                }
            }
            for i in i1..i2 {
                let g = group_at(i);
                let grids_g = &grids[g * m..(g + 1) * m];
                let d = u[(i, i)];
                let e = err.col_as_slice_mut(i - i1);
                for (j, (&x, e)) in wp.col_as_slice(i).iter().zip(e.iter_mut()).enumerate() {
                    let code = grids_g[j].code(x);
                    codes[j * n + perm[i]] = code as u8;
                    *e = (x - grids_g[j].value(code)) / d;
                }
                let e = err.col_as_slice(i - i1);
                for k in i + 1..i2 {
                    let uik = u[(i, k)];
                    for (wk, e) in wp.col_as_slice_mut(k).iter_mut().zip(e) {
                        *wk -= e * uik;
                    }
                }
            }
            if i2 < n {
                matmul(
                    wp.as_mut().subcols_mut(i2, n - i2),
                    Accum::Add,
                    err.as_ref().subcols(0, i2 - i1),
                    u.as_ref().submatrix(i1, i2, i2 - i1, n - i2),
                    -1.0,
                    self.par,
                );
            }
        }
        let mut g_idx = vec![0u32; n];
        for (k, &input) in perm.iter().enumerate() {
            g_idx[input] = group_at(k) as u32;
        }
        Ok(QuantizedLinear::assemble(
            spec, codes, grids, g_idx, problem, self.par,
        ))
    }
}

/// Fits one grid per output to the columns of `w` (outputs x group inputs).
fn fit_group(spec: GridSpec, w: MatRef<'_, f32>, grids: &mut [Grid]) {
    let mut lo = vec![0.0f32; w.nrows()];
    let mut hi = vec![0.0f32; w.nrows()];
    for k in 0..w.ncols() {
        let col = w.col(k);
        for (j, (lo, hi)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
            *lo = lo.min(col[j]);
            *hi = hi.max(col[j]);
        }
    }
    for (grid, (lo, hi)) in grids.iter_mut().zip(lo.into_iter().zip(hi)) {
        *grid = spec.fit_range(lo, hi);
    }
}

/// Fits the grids of one fit span per output to the rows of `w` (outputs x span inputs)
/// from the values in processing order, with `weights` for a weighted fit (GGUF specs,
/// whose min-max fit depends on the order of the values); `grids` holds the span's
/// groups, `[k * outputs + j]`.
fn fit_span_values(
    spec: GridSpec,
    w: MatRef<'_, f32>,
    weights: &[f32],
    grids: &mut [Grid],
    par: Par,
) {
    let m = w.nrows();
    let per_span = grids.len() / m;
    let fitted = map_outputs(par, m, |j| {
        let values: Vec<f32> = (0..w.ncols()).map(|k| w[(j, k)]).collect();
        let mut span_grids = vec![Grid::default(); per_span];
        spec.fit_span_grids(&values, weights, &mut span_grids);
        span_grids
    });
    for (j, span_grids) in fitted.into_iter().enumerate() {
        for (k, grid) in span_grids.into_iter().enumerate() {
            grids[k * m + j] = grid;
        }
    }
}

/// The upper triangular `U` with `U^T U = A^{-1}`, where `A = P^T H' P + damp I` (`H'`:
/// `H` with its dead diagonal entries set to 1; `P` the processing order), in f64 and
/// returned in f32.
///
/// With `J` the reversal permutation, one Cholesky factorisation `J A J = M M^T` gives
/// `A^{-1} = (J M^{-1} J)^T (J M^{-1} J)`, and `J M^{-1} J` is upper triangular with a
/// positive diagonal, hence the factor (the reference's three steps, Cholesky,
/// `cholesky_inverse`, upper Cholesky, reach the same matrix with twice the work).
fn inverse_cholesky_upper(
    h: MatRef<'_, f32>,
    perm: &[usize],
    dead: &[bool],
    damp: f64,
    par: Par,
) -> Result<Mat<f32>, QuantError> {
    let n = perm.len();
    let reversed = |r: usize| perm[n - 1 - r];
    let mut a = Mat::<f64>::from_fn(n, n, |r, c| {
        if r < c {
            return 0.0; // only the lower triangle is read
        }
        let (x, y) = (reversed(r), reversed(c));
        if r == c {
            (if dead[x] { 1.0 } else { h[(x, x)] as f64 }) + damp
        } else {
            h[(x, y)] as f64
        }
    });
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map_err(
        |LltError::NonPositivePivot { index }| QuantError::NotPositiveDefinite {
            input: reversed(index),
        },
    )?;
    let mut inverse = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(inverse.as_mut(), a.as_ref(), par);
    Ok(Mat::from_fn(n, n, |i, k| {
        if k >= i {
            inverse[(n - 1 - i, n - 1 - k)] as f32
        } else {
            0.0
        }
    }))
}
