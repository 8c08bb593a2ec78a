//! MagR: weight magnitude reduction (Zhang et al., NeurIPS 2024, arXiv 2406.00800).

use std::time::Instant;

use faer::{Mat, MatRef, Par};

use crate::error::{check_finite, check_shape};
use crate::{
    Fista, LinfNorm, ProxError, ProximalGradient, Quadratic, StoppingRule, largest_eigenvalue,
};

/// How the l-infinity penalty groups the weights of a column (one output channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One `||w||_inf` per column (the paper's per-channel MagR).
    PerChannel,
    /// One `||.||_inf` per run of this many consecutive inputs within a column; must
    /// divide the number of inputs.
    PerGroup(usize),
}

/// Which proximal-gradient method solves MagR's problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// Fixed step `1/lambda_max`, no acceleration: the paper's and the reference code's method.
    Plain,
    /// FISTA with adaptive restart: the same objective in fewer iterations.
    Fista,
}

/// The objective tolerance of [`MagrOptions::fista`]: stop once `F` fell by at most this
/// fraction over the last 10 iterations.
pub const FISTA_OBJECTIVE_TOL: f64 = 1e-4;

/// The iterations that FISTA gets in place of the reference's 200 plain ones (a fifth of
/// the products): enough to reach their objective on low-rank-plus-noise `H` (tested in
/// `tests/properties.rs`) and on SmolLM2's layers, where FISTA matches 200 plain
/// iterations after 34 to 38 (`docs/results.md`, `examples/magr_solvers.rs`).
pub const FISTA_ITERATIONS: usize = 40;

/// Settings of [`magr`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MagrOptions {
    /// Penalty `alpha` of the normalised problem (see [`magr`]); the reference uses 1e-3
    /// per channel and 1e-4 per group.
    pub alpha: f64,
    /// Iterations at most (the reference: 200, no stopping test).
    pub iterations: usize,
    /// Stop once the objective fell by at most this fraction over 10 iterations
    /// ([`StoppingRule::objective_tol`]); `0.0` (the reference) runs every iteration.
    pub objective_tol: f64,
    /// Per channel or per group.
    pub grouping: Grouping,
    /// Plain or FISTA.
    pub solver: Solver,
    /// Record the objective after each iteration in the report.
    pub record_trace: bool,
    /// Parallelism of products and prox.
    pub par: Par,
}

impl MagrOptions {
    /// The reference per-channel settings: alpha 1e-3, 200 plain iterations.
    pub fn per_channel() -> Self {
        Self {
            alpha: 1e-3,
            iterations: 200,
            objective_tol: 0.0,
            grouping: Grouping::PerChannel,
            solver: Solver::Plain,
            record_trace: false,
            par: Par::rayon(0),
        }
    }

    /// The reference per-group settings: alpha 1e-4, 200 plain iterations, groups of
    /// `group_size` inputs.
    pub fn per_group(group_size: usize) -> Self {
        Self {
            alpha: 1e-4,
            grouping: Grouping::PerGroup(group_size),
            ..Self::per_channel()
        }
    }

    /// These settings solved by FISTA in at most [`FISTA_ITERATIONS`], with the
    /// objective test at [`FISTA_OBJECTIVE_TOL`].
    pub fn fista(self) -> Self {
        Self {
            solver: Solver::Fista,
            iterations: FISTA_ITERATIONS,
            objective_tol: FISTA_OBJECTIVE_TOL,
            ..self
        }
    }
}

impl Default for MagrOptions {
    fn default() -> Self {
        Self::per_channel()
    }
}

/// What [`magr`] did, as plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct MagrReport {
    /// `lambda_max(H)` (Lanczos estimate; 0 for a dead layer).
    pub lambda_max: f64,
    /// Iterations run.
    pub iterations: usize,
    /// FISTA momentum restarts (0 for the plain method and a dead layer).
    pub restarts: usize,
    /// Objective `1/2 tr(D^T H D) + alpha * lambda_max * sum ||w_group||_inf` at `W0`.
    pub objective_before: f64,
    /// The same objective at the result.
    pub objective_after: f64,
    /// Objective at the start and after each iteration, if recorded.
    pub trace: Option<Vec<f64>>,
    /// `max_i |W0_ij|` per column `j`.
    pub max_abs_before: Vec<f32>,
    /// `max_i |W_ij|` per column of the result.
    pub max_abs_after: Vec<f32>,
    /// `||X (W - W0)||_F^2 = tr((W - W0)^T H (W - W0))`, the total output error.
    pub output_error: f64,
    /// Wall time of the whole call, in seconds.
    pub seconds: f64,
    /// Anything the caller should know (a dead layer, for instance).
    pub warnings: Vec<String>,
}

/// MagR on one linear layer: for `W0` (in x out, one column per output channel) and
/// `H = X^T X` (in x in), solves
///
/// `min_W 1/2 ||X (W - W0)||_F^2 + alpha * lambda_max(H) * sum_groups ||w_group||_inf`
///
/// by proximal gradient from `W = W0` with step `1/lambda_max(H)`, so that each step is
/// `V = W - H (W - W0) / lambda_max`, then `w = prox_{alpha ||.||_inf}(v)` per column (or
/// per group): the reference semantics exactly, with `lambda_max` from Lanczos instead of
/// an SVD. With the plain solver the objective never increases, so per column
/// `||X (w - w0)||^2 <= 2 alpha lambda_max ||w0||_inf` and `max |w|` never grows.
///
/// An all-zero `H` (a layer that calibration never activates) returns `W0` unchanged
/// with a warning. `alpha = 0` returns `W0`.
///
/// # Errors
/// Shapes (`H` must be in x in), non-finite entries, negative or non-finite `alpha`,
/// a group size of zero. A group size that does not divide `in` leaves the last group of
/// each column shorter (as the GPTQ reference's groups).
pub fn magr(
    w0: MatRef<'_, f32>,
    h: MatRef<'_, f32>,
    options: &MagrOptions,
) -> Result<(Mat<f32>, MagrReport), ProxError> {
    magr_solved_by(w0, h, options, |problem, w| {
        let stop = StoppingRule::objective(options.iterations, options.objective_tol);
        let (record_trace, par) = (options.record_trace, options.par);
        let report = match options.solver {
            Solver::Plain => ProximalGradient {
                stop,
                record_trace,
                par,
            }
            .solve(problem.smooth, problem.prox, w),
            Solver::Fista => Fista {
                stop,
                record_trace,
                par,
            }
            .solve(problem.smooth, problem.prox, w),
        };
        Ok(Solved {
            iterations: report.iterations,
            restarts: report.restarts,
            objective: Some(report.objective),
            trace: report.trace,
        })
    })
}

/// MagR's problem as [`magr_solved_by`] hands it to a solver: `F = smooth + prox` with
/// `smooth = 1/2 tr((W - W0)^T H (W - W0))` (Lipschitz constant `lambda_max`) and
/// `prox = alpha lambda_max sum ||w_group||_inf`.
pub struct MagrProblem<'a> {
    /// The quadratic, holding `H`, `W0` and `lambda_max`.
    pub smooth: &'a Quadratic<'a>,
    /// The penalty.
    pub prox: &'a LinfNorm,
    /// `lambda_max(H)` (positive: a zero `H` never reaches a solver).
    pub lambda_max: f64,
}

/// What a solver of [`magr_solved_by`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Solved {
    /// Iterations run.
    pub iterations: usize,
    /// FISTA momentum restarts (0 for the plain method).
    pub restarts: usize,
    /// The objective at the result, if the solver computed it (otherwise it is
    /// computed on the host from the result).
    pub objective: Option<f64>,
    /// Objective at the start and after each iteration, if the solver recorded it.
    pub trace: Option<Vec<f64>>,
}

/// [`magr`] with the iterations run by `solve`, which starts from `W = W0` in `w` and
/// leaves its result there (another device's solver, for instance): the checks,
/// `lambda_max`, the zero-`H` case and the report (objectives and errors computed here,
/// on the host) are [`magr`]'s.
///
/// # Errors
/// As [`magr`], and `solve`'s.
pub fn magr_solved_by(
    w0: MatRef<'_, f32>,
    h: MatRef<'_, f32>,
    options: &MagrOptions,
    solve: impl FnOnce(&MagrProblem<'_>, &mut Mat<f32>) -> Result<Solved, ProxError>,
) -> Result<(Mat<f32>, MagrReport), ProxError> {
    let start = Instant::now();
    let rows = w0.nrows();
    check_shape("H", h, rows, rows)?;
    check_finite("W0", w0)?;
    check_finite("H", h)?;
    if !(options.alpha.is_finite() && options.alpha >= 0.0) {
        return Err(ProxError::Parameter(format!(
            "alpha must be finite and >= 0, got {}",
            options.alpha
        )));
    }
    let group_rows = match options.grouping {
        Grouping::PerChannel => None,
        Grouping::PerGroup(0) => {
            return Err(ProxError::Parameter("group size must be positive".into()));
        }
        Grouping::PerGroup(g) => Some(g),
    };

    let lambda_max =
        largest_eigenvalue(h, crate::quadratic::LAMBDA_MAX_TOLERANCE, options.par)?.value;
    let f = Quadratic::with_lipschitz(h, w0, lambda_max)?;
    let g = LinfNorm {
        weight: options.alpha * lambda_max,
        group_rows,
    };
    let max_abs_before = column_max_abs(w0);
    let mut w = w0.to_owned();
    let mut warnings = Vec::new();
    let (iterations, restarts, objective_before, objective_after, trace) = if lambda_max <= 0.0 {
        warnings.push(
            "H is zero (no calibration signal reaches this layer): W0 returned unchanged".into(),
        );
        let obj = crate::Prox::value(&g, w0);
        (
            0,
            0,
            obj,
            Some(obj),
            options.record_trace.then(|| vec![obj]),
        )
    } else {
        let objective_before = crate::Prox::value(&g, w0); // f(W0) = 0
        let problem = MagrProblem {
            smooth: &f,
            prox: &g,
            lambda_max,
        };
        let solved = solve(&problem, &mut w)?;
        check_finite("W (MagR's result)", w.as_ref())?;
        (
            solved.iterations,
            solved.restarts,
            objective_before,
            solved.objective,
            solved.trace,
        )
    };
    let output_error: f64 = f.column_errors(w.as_ref(), options.par).iter().sum();
    let objective_after =
        objective_after.unwrap_or_else(|| output_error / 2.0 + crate::Prox::value(&g, w.as_ref()));
    let report = MagrReport {
        lambda_max,
        iterations,
        restarts,
        objective_before,
        objective_after,
        trace,
        max_abs_before,
        max_abs_after: column_max_abs(w.as_ref()),
        output_error,
        seconds: start.elapsed().as_secs_f64(),
        warnings,
    };
    Ok((w, report))
}

/// `max_i |M_ij|` for each column `j`.
pub fn column_max_abs(m: MatRef<'_, f32>) -> Vec<f32> {
    m.col_iter()
        .map(|c| c.iter().fold(0.0f32, |acc, v| acc.max(v.abs())))
        .collect()
}
