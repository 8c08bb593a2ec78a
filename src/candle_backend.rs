//! [`CandleBackend`]: the compute backend written once in candle's tensor operations, so
//! that the same code runs on any candle device (the CPU here, in every test run; CUDA
//! in a build with the `cuda` feature).
//!
//! On the device: `H = X^T X` (the forward pass and the products run where the model's
//! device is) and MagR's iterations, plain or FISTA as on the host (one product
//! `(W - W0) H` per iteration, which also gives the objective; the prox of
//! `alpha ||.||_inf` per column or group: `w = clamp(v, -tau, tau)` with `tau` the l1
//! projection threshold of `v` at radius `alpha`, 0 when `||v||_1 <= alpha`, by
//! Michelot's iteration on all rows at once, in f64). `lambda_max`
//! (Lanczos), the checks and the report are [`prox_opt::magr_solved_by`]'s on the host.
//! OPTQ with grids per channel runs its column loop and lazy block products on the
//! device ([`Optq::quantize_swept_by`]: grids, order, the factor `U` (f64 Cholesky) and
//! the result on the host); OPTQ with groups or GGUF grids and coordinate descent run on
//! the host (faer).

use candle_core::{D, DType, Device, Tensor};
use faer::{Mat, MatRef};
use llama_io::gemm::gemm;
use prox_opt::{
    MagrOptions, MagrReport, MomentumSchedule, ObjectiveTest, ProxError, Solved, Solver,
};
use quantizers::{
    CoordinateDescent, LayerProblem, Optq, OptqSweep, QuantError, QuantizedLinear, Quantizer,
};

use crate::backend::ComputeBackend;
use crate::error::PipelineError;

/// The candle backend on `device`.
#[derive(Debug, Clone)]
pub struct CandleBackend {
    device: Device,
}

impl CandleBackend {
    /// The backend on `device` (the model's forward pass runs on the model's device).
    pub fn new(device: Device) -> Self {
        CandleBackend { device }
    }
}

impl ComputeBackend for CandleBackend {
    fn name(&self) -> &'static str {
        if self.device.is_cuda() {
            "candle-cuda"
        } else {
            "candle-cpu"
        }
    }

    fn magr(
        &self,
        w0: MatRef<'_, f32>,
        h: MatRef<'_, f32>,
        options: &MagrOptions,
    ) -> Result<(Mat<f32>, MagrReport), PipelineError> {
        let group_rows = match options.grouping {
            prox_opt::Grouping::PerChannel => None,
            prox_opt::Grouping::PerGroup(g) => Some(g),
        };
        let device = &self.device;
        Ok(prox_opt::magr_solved_by(w0, h, options, |problem, w| {
            // The message without candle's backtrace.
            let device_error = |e: candle_core::Error| {
                let e = llama_io::LlamaIoError::from(e);
                ProxError::Parameter(format!("MagR on {device:?}: {e}"))
            };
            let problem = DeviceMagr {
                w0: to_device(w0, device).map_err(device_error)?,
                h: to_device(h, device).map_err(device_error)?,
                step: 1.0 / problem.lambda_max,
                alpha: options.alpha,
                weight: problem.prox.weight,
                group_rows,
            };
            let (result, solved) = problem.solve(options).map_err(device_error)?;
            let values = result
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(device_error)?;
            for (j, column) in values.chunks_exact(w0.nrows()).enumerate() {
                w.col_mut(j)
                    .iter_mut()
                    .zip(column)
                    .for_each(|(x, &y)| *x = y);
            }
            Ok(solved)
        })?)
    }

    fn optq<'a>(&'a self, optq: Optq) -> Box<dyn Quantizer + 'a> {
        Box::new(DeviceOptq {
            optq,
            device: &self.device,
        })
    }

    fn coordinate_descent<'a>(&'a self, cd: CoordinateDescent) -> Box<dyn Quantizer + 'a> {
        Box::new(cd)
    }
}

/// MagR's problem on the device: `W0` and `H` as row-major `out x in` and `in x in`
/// tensors, the step `1/lambda_max`, the prox threshold `alpha` (that is, step times the
/// penalty's weight `alpha lambda_max`) and the groups.
struct DeviceMagr {
    w0: Tensor,
    h: Tensor,
    step: f64,
    alpha: f64,
    weight: f64,
    group_rows: Option<usize>,
}

/// An iterate with its gradient `(W - W0) H` and objective `F(W)`.
struct Iterate {
    w: Tensor,
    gradient: Tensor,
    value: f64,
}

impl DeviceMagr {
    /// `W` with its gradient and objective (one product).
    fn iterate(&self, w: Tensor) -> candle_core::Result<Iterate> {
        let d = (&w - &self.w0)?;
        let gradient = gemm(&d, &self.h)?;
        let f = (d.to_dtype(DType::F64)? * gradient.to_dtype(DType::F64)?)?
            .sum_all()?
            .to_scalar::<f64>()?;
        let g = group_max_abs_sum(&w, self.group_rows)?;
        Ok(Iterate {
            value: 0.5 * f + self.weight * g,
            w,
            gradient,
        })
    }

    /// The proximal step `prox(y - step grad f(y))` from `y` with gradient `gradient`.
    fn step_from(&self, y: &Tensor, gradient: &Tensor) -> candle_core::Result<Tensor> {
        prox_linf(
            &(y - gradient.affine(self.step, 0.0)?)?,
            self.alpha,
            self.group_rows,
        )
    }

    /// The solver of `options` from `W0`, as [`prox_opt::Fista`] (momentum, the
    /// extrapolated gradient by linearity, the function-value restart with the plain
    /// step) or [`prox_opt::ProximalGradient`] (no momentum), with their objective test.
    fn solve(&self, options: &MagrOptions) -> candle_core::Result<(Tensor, Solved)> {
        let stop = prox_opt::StoppingRule::objective(options.iterations, options.objective_tol);
        let momentum = options.solver == Solver::Fista;
        let mut x = self.iterate(self.w0.clone())?;
        let mut prev: Option<Iterate> = None;
        let mut trace = options.record_trace.then(|| vec![x.value]);
        let mut test = ObjectiveTest::from_start(x.value);
        let mut schedule = MomentumSchedule::default();
        let (mut iterations, mut restarts) = (0, 0);
        while iterations < options.iterations {
            let beta = schedule.beta();
            let mut z = match (&prev, momentum && beta != 0.0) {
                (Some(p), true) => {
                    let y = (&x.w + ((&x.w - &p.w)? * beta)?)?;
                    let gy = (&x.gradient + ((&x.gradient - &p.gradient)? * beta)?)?;
                    self.iterate(self.step_from(&y, &gy)?)?
                }
                _ => self.iterate(self.step_from(&x.w, &x.gradient)?)?,
            };
            let restart = momentum && beta != 0.0 && z.value > x.value;
            if restart {
                z = self.iterate(self.step_from(&x.w, &x.gradient)?)?;
            }
            prev = Some(std::mem::replace(&mut x, z));
            iterations += 1;
            restarts += usize::from(restart);
            schedule.advance(restart);
            if let Some(t) = trace.as_mut() {
                t.push(x.value);
            }
            if test.stops(&stop, iterations, x.value) {
                break;
            }
        }
        Ok((
            x.w,
            Solved {
                iterations,
                restarts,
                objective: Some(x.value),
                trace,
            },
        ))
    }
}

/// OPTQ with its column loop on the device ([`Optq::quantize_swept_by`]: grids, order,
/// `U` and the result on the host).
struct DeviceOptq<'a> {
    optq: Optq,
    device: &'a Device,
}

impl Quantizer for DeviceOptq<'_> {
    fn quantize(&self, problem: &LayerProblem<'_>) -> Result<QuantizedLinear, QuantError> {
        self.optq.quantize_swept_by(problem, |sweep| {
            optq_sweep(&sweep, self.device).map_err(|e| {
                let e = llama_io::LlamaIoError::from(e);
                QuantError::Parameter(format!("OPTQ on {:?}: {e}", self.device))
            })
        })
    }
}

/// OPTQ's column loop (the reference's, step by step): per block of columns, each column
/// rounded onto its row's grid, its error `e = (x - q) / U_kk` spread over the block's
/// later columns by row `k` of `U`, then the block's errors over the columns after it
/// in one product. Returns the codes `m x n` row-major, in processing order.
fn optq_sweep(s: &OptqSweep<'_>, device: &Device) -> candle_core::Result<Vec<u8>> {
    let (m, n) = (s.weights.nrows(), s.weights.ncols());
    let rows = |mat: &Mat<f32>| -> candle_core::Result<Tensor> {
        let data: Vec<f32> = (0..mat.nrows())
            .flat_map(|r| (0..mat.ncols()).map(move |c| mat[(r, c)]))
            .collect();
        Tensor::from_vec(data, (mat.nrows(), mat.ncols()), device)
    };
    let column = |f: &dyn Fn(&quantizers::Grid) -> f32| {
        Tensor::from_vec(s.grids.iter().map(f).collect::<Vec<f32>>(), (m, 1), device)
    };
    let (scale, zero, maxq) = (
        column(&|g| g.scale)?,
        column(&|g| g.zero as f32)?,
        column(&|g| g.maxq as f32)?,
    );
    let u = rows(&s.factor)?;
    // The columns not yet quantized.
    let mut rest = rows(&s.weights)?;
    let mut codes = Vec::with_capacity(n);
    let bs = s.block_size.max(1);
    for i1 in (0..n).step_by(bs) {
        let b = bs.min(n - i1);
        let u_block = u.narrow(0, i1, b)?;
        let mut block = rest.narrow(1, 0, b)?;
        let mut errors = Vec::with_capacity(b);
        for i in 0..b {
            let x = block.narrow(1, i, 1)?;
            let code = round_ties_even(&x.broadcast_div(&scale)?)?
                .broadcast_add(&zero)?
                .clamp(0f32, f32::MAX)?
                .broadcast_minimum(&maxq)?;
            let q = code.broadcast_sub(&zero)?.broadcast_mul(&scale)?;
            let row = u_block.narrow(0, i, 1)?.narrow(1, i1, b)?;
            let e = (x - q)?.broadcast_div(&row.narrow(1, i, 1)?)?;
            // U is upper triangular: the columns before `i` are left as they are.
            block = (block - e.broadcast_mul(&row)?)?;
            codes.push(code);
            errors.push(e);
        }
        if i1 + b < n {
            let later = n - i1 - b;
            let spread = gemm(
                &Tensor::cat(&errors, 1)?,
                &u_block.narrow(1, i1 + b, later)?,
            )?;
            rest = (rest.narrow(1, b, later)? - spread)?;
        }
    }
    let codes = Tensor::cat(&codes, 1)?.to_dtype(DType::U8)?;
    codes.flatten_all()?.to_vec1::<u8>()
}

/// `round` with ties to even, as the reference quantizer rounds (candle's `round`
/// takes ties away from zero).
fn round_ties_even(y: &Tensor) -> candle_core::Result<Tensor> {
    let r = y.round()?;
    let tie = (&r - y)?.abs()?.eq(0.5f32)?;
    let half = (&r * 0.5)?;
    let odd = half.floor()?.ne(&half)?;
    (tie * odd)?.where_cond(&(&r - y.sign()?)?, &r)
}

/// `m` (column-major) as a row-major `ncols x nrows` tensor on `device`.
fn to_device(m: MatRef<'_, f32>, device: &Device) -> candle_core::Result<Tensor> {
    let mut data = Vec::with_capacity(m.nrows() * m.ncols());
    for j in 0..m.ncols() {
        data.extend(m.col(j).iter().copied());
    }
    Tensor::from_vec(data, (m.ncols(), m.nrows()), device)
}

/// The groups of the rows of `v` (one row per output channel) as the rows of 2-D
/// tensors: each row whole (`group_rows` `None`), or its runs of `group_rows` entries,
/// then, when that does not divide the row, each row's shorter last run.
fn groups(v: &Tensor, group_rows: Option<usize>) -> candle_core::Result<Vec<Tensor>> {
    let (rows, len) = v.dims2()?;
    let g = group_rows.unwrap_or(len).min(len);
    let whole = len / g * g;
    let mut parts = Vec::with_capacity(2);
    if whole > 0 {
        parts.push(v.narrow(1, 0, whole)?.reshape((rows * (whole / g), g))?);
    }
    if whole < len {
        parts.push(v.narrow(1, whole, len - whole)?);
    }
    Ok(parts)
}

/// `prox_{alpha ||.||_inf}` of each group of `v` ([`groups`]).
fn prox_linf(v: &Tensor, alpha: f64, group_rows: Option<usize>) -> candle_core::Result<Tensor> {
    let rows = v.dim(0)?;
    let parts = groups(v, group_rows)?
        .iter()
        .map(|part| prox_linf_rows(part, alpha)?.reshape((rows, ())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// `sum over groups of max |w|` ([`groups`]), in f64.
fn group_max_abs_sum(w: &Tensor, group_rows: Option<usize>) -> candle_core::Result<f64> {
    groups(w, group_rows)?.iter().try_fold(0.0, |sum, part| {
        let max = part.abs()?.max(D::Minus1)?.to_dtype(DType::F64)?;
        Ok(sum + max.sum_all()?.to_scalar::<f64>()?)
    })
}

/// `prox_{alpha ||.||_inf}` of each row of `v`: `v - P(v)` with `P` the projection onto
/// the l1 ball of radius `alpha`, i.e. `clamp(v, -tau, tau)` with `tau >= 0` solving
/// `sum_i max(|v_i| - tau, 0) = alpha` (0 when `||v||_1 <= alpha`). `tau` by Michelot's
/// iteration, as `l1_projection::Michelot` on the host, all rows at once and in f64:
/// from the whole row active, `tau = (sum_{active} |v_i| - alpha) / |active|`, then
/// `active = {i : |v_i| > tau}`, until no row's active set shrinks (`tau` only grows, and
/// is exact once the set is stable): at most the row's length in steps, a handful on
/// real layers, each a few passes over the rows. Elementwise operations and row sums
/// only: no sort, which candle's CUDA kernel limits to short rows.
fn prox_linf_rows(v: &Tensor, alpha: f64) -> candle_core::Result<Tensor> {
    let a = v.abs()?.to_dtype(DType::F64)?;
    let tau_of = |active: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
        let count = active.sum_keepdim(D::Minus1)?;
        let sum = (&a * active)?.sum_keepdim(D::Minus1)?;
        let tau = (sum.affine(1.0, -alpha)? / count.clamp(1.0, f64::MAX)?)?;
        Ok((tau, count))
    };
    let (mut tau, mut count) = tau_of(&a.ones_like()?)?;
    for _ in 0..v.dim(D::Minus1)? {
        let (next, next_count) = tau_of(&a.broadcast_gt(&tau)?.to_dtype(DType::F64)?)?;
        let changed = (&next_count - &count)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        (tau, count) = (next, next_count);
        if changed == 0.0 {
            break;
        }
    }
    let tau = tau.clamp(0.0, f64::MAX)?.to_dtype(v.dtype())?;
    v.broadcast_minimum(&tau)?.broadcast_maximum(&tau.neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `tau` of one row by the textbook rule, in f64: the magnitudes sorted down, the
    /// largest `k` with `u_k > (sum_{j<=k} u_j - alpha) / k`, `tau` that ratio (0 when
    /// the row's l1 norm is at most `alpha`).
    fn naive_tau(row: &[f32], alpha: f64) -> f64 {
        let mut u: Vec<f64> = row.iter().map(|&x| f64::from(x).abs()).collect();
        u.sort_by(|a, b| b.total_cmp(a));
        if u.iter().sum::<f64>() <= alpha {
            return 0.0;
        }
        let (mut sum, mut tau) = (0.0, 0.0);
        for (k, &x) in u.iter().enumerate() {
            sum += x;
            let t = (sum - alpha) / (k + 1) as f64;
            if x > t {
                tau = t;
            }
        }
        tau
    }

    proptest! {
        /// Each row clamped at the textbook `tau`, to f32 rounding: rows with ties,
        /// zeros, one dominant entry, and l1 norms on both sides of `alpha`.
        #[test]
        fn prox_linf_rows_clamps_at_the_textbook_tau(
            rows in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![Just(0.0f32), Just(0.5f32), Just(-0.5f32), -2.0f32..2.0], 40),
                1..6),
            alpha in prop_oneof![Just(1e-3), Just(0.3), Just(5.0), Just(100.0)],
        ) {
            let data: Vec<f32> = rows.concat();
            let v = Tensor::from_vec(data, (rows.len(), 40), &Device::Cpu).unwrap();
            let got = prox_linf_rows(&v, alpha).unwrap().to_vec2::<f32>().unwrap();
            for (row, out) in rows.iter().zip(&got) {
                let tau = naive_tau(row, alpha) as f32;
                for (&x, &y) in row.iter().zip(out) {
                    let want = x.clamp(-tau, tau);
                    prop_assert!((y - want).abs() <= 1e-6 * (1.0 + x.abs()), "{x}: {y} vs {want}");
                }
            }
        }
    }
}
