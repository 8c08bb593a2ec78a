//! [`CandleBackend`]: the compute backend written once in candle's tensor operations, so
//! that the same code runs on any candle device (the CPU here, in every test run; CUDA
//! in a build with the `cuda` feature).
//!
//! On the device: `H = X^T X` (the forward pass and the products run where the model's
//! device is) and MagR's iterations (the product `(W - W0) H`, then the prox of
//! `alpha ||.||_inf` per column or group: `w = clamp(v, -tau, tau)` with `tau` the l1
//! projection threshold of `v` at radius `alpha`, 0 when `||v||_1 <= alpha`, bracketed
//! by bisection and then solved exactly on its active set, in f64). `lambda_max`
//! (Lanczos), the checks and the report are [`prox_opt::magr_solved_by`]'s on the host.
//! OPTQ with grids per channel runs its column loop and lazy block products on the
//! device ([`Optq::quantize_swept_by`]: grids, order, the factor `U` (f64 Cholesky) and
//! the result on the host); OPTQ with groups or GGUF grids and coordinate descent run on
//! the host (faer).

use candle_core::{D, DType, Device, Tensor};
use faer::{Mat, MatRef};
use prox_opt::{MagrOptions, MagrReport, ProxError, Solved, Solver};
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
        if options.solver != Solver::Plain || options.objective_tol > 0.0 || options.record_trace {
            return Err(PipelineError::Settings(format!(
                "the {} backend runs MagR's plain solver with a fixed number of iterations \
                 only (no FISTA, objective test or trace yet)",
                self.name()
            )));
        }
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
            let result = (|| {
                // Column-major `W` (in x out) is `out x in` row-major; `H` is symmetric.
                let w0_t = to_device(w0, device)?;
                let h_t = to_device(h, device)?;
                let step = 1.0 / problem.lambda_max;
                let mut w_t = w0_t.clone();
                for _ in 0..options.iterations {
                    let gradient = (&w_t - &w0_t)?.matmul(&h_t)?;
                    let v = (&w_t - gradient.affine(step, 0.0)?)?;
                    w_t = prox_linf(&v, options.alpha, group_rows)?;
                }
                let values = w_t.flatten_all()?.to_vec1::<f32>()?;
                let rows = w0.nrows();
                for (j, column) in values.chunks_exact(rows).enumerate() {
                    w.col_mut(j)
                        .iter_mut()
                        .zip(column)
                        .for_each(|(x, &y)| *x = y);
                }
                Ok(())
            })();
            result.map_err(device_error)?;
            Ok(Solved {
                iterations: options.iterations,
                objective: None,
                trace: None,
            })
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
            let spread = Tensor::cat(&errors, 1)?.matmul(&u_block.narrow(1, i1 + b, later)?)?;
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

/// `prox_{alpha ||.||_inf}` of each row of `v` (one output channel), or of each run of
/// `group_rows` entries of a row (the last one shorter when it does not divide the row).
fn prox_linf(v: &Tensor, alpha: f64, group_rows: Option<usize>) -> candle_core::Result<Tensor> {
    let (rows, len) = v.dims2()?;
    let g = group_rows.unwrap_or(len).min(len);
    let whole = len / g * g;
    let mut parts = Vec::with_capacity(2);
    if whole > 0 {
        let main = v.narrow(1, 0, whole)?.reshape((rows * (whole / g), g))?;
        parts.push(prox_linf_rows(&main, alpha)?.reshape((rows, whole))?);
    }
    if whole < len {
        parts.push(prox_linf_rows(&v.narrow(1, whole, len - whole)?, alpha)?);
    }
    Tensor::cat(&parts, 1)
}

/// Bisection steps of [`prox_linf_rows`]: the bracket of `tau` shrinks to `2^-60` of
/// the row's largest magnitude, below f64's resolution of the sum that decides it.
const BISECTION_STEPS: usize = 60;

/// `prox_{alpha ||.||_inf}` of each row of `v`: `v - P(v)` with `P` the projection onto
/// the l1 ball of radius `alpha`, i.e. `clamp(v, -tau, tau)` with `tau >= 0` solving
/// `sum_i max(|v_i| - tau, 0) = alpha` (0 when `||v||_1 <= alpha`). `tau` is bracketed
/// by bisection (elementwise operations and row sums only: no sort, which candle's CUDA
/// kernel limits to short rows), then computed exactly from the active set
/// `{i : |v_i| > lo}` as `(sum_active |v_i| - alpha) / |active|`, all in f64.
fn prox_linf_rows(v: &Tensor, alpha: f64) -> candle_core::Result<Tensor> {
    let a = v.abs()?.to_dtype(DType::F64)?;
    let mut lo = a.zeros_like()?.narrow(1, 0, 1)?.contiguous()?;
    let mut hi = a.max_keepdim(D::Minus1)?;
    for _ in 0..BISECTION_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let above = a
            .broadcast_sub(&mid)?
            .relu()?
            .sum_keepdim(D::Minus1)?
            .gt(alpha)?;
        lo = above.where_cond(&mid, &lo)?;
        hi = above.where_cond(&hi, &mid)?;
    }
    let active = a.broadcast_gt(&lo)?.to_dtype(DType::F64)?;
    let count = active.sum_keepdim(D::Minus1)?.clamp(1.0, f64::MAX)?;
    let sum = (&a * &active)?.sum_keepdim(D::Minus1)?;
    let tau = (sum.affine(1.0, -alpha)? / count)?.clamp(0.0, f64::MAX)?;
    let tau = tau.to_dtype(v.dtype())?;
    v.broadcast_minimum(&tau)?.broadcast_maximum(&tau.neg()?)
}
