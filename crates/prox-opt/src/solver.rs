//! Proximal gradient (fixed step `1/L`) and FISTA with adaptive restart.

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, MatMut, MatRef, Par, unzip, zip};

use crate::prox::{for_each_column_block, for_each_column_block_pair};
use crate::{Prox, Quadratic, Smooth};

/// When to stop: after `max_iterations`, or earlier once the relative change
/// `||x_{k+1} - x_k||_F / ||x_k||_F` falls to `rel_tol`, or once the objective fell by at
/// most `objective_tol * |F(x_k)|` over the last [`OBJECTIVE_CHECK_EVERY`] iterations
/// (`F(x_{k-10}) - F(x_k)`, checked at `k = 10, 20, ...`). A tolerance of `0` disables its
/// test; with both at `0` every iteration runs, as in the MagR reference code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoppingRule {
    /// Upper bound on iterations (gradient steps).
    pub max_iterations: usize,
    /// Relative-change tolerance; `0.0` disables the test.
    pub rel_tol: f64,
    /// Relative objective-decrease tolerance; `0.0` disables the test.
    pub objective_tol: f64,
}

/// Iterations between two evaluations of the objective test of [`StoppingRule`]. FISTA
/// pays one product per evaluation (its gradient is taken at the extrapolated point);
/// the plain method gets `F(x_k)` with its gradient.
pub const OBJECTIVE_CHECK_EVERY: usize = 10;

impl StoppingRule {
    /// Exactly `n` iterations, no early stop.
    pub fn iterations(n: usize) -> Self {
        Self {
            max_iterations: n,
            rel_tol: 0.0,
            objective_tol: 0.0,
        }
    }

    /// At most `n` iterations, stopping once the objective stalls by `objective_tol`.
    pub fn objective(n: usize, objective_tol: f64) -> Self {
        Self {
            objective_tol,
            ..Self::iterations(n)
        }
    }

    /// Whether the objective test runs after iteration `k` (counting from 1).
    pub fn objective_due(&self, k: usize) -> bool {
        self.objective_tol > 0.0 && k.is_multiple_of(OBJECTIVE_CHECK_EVERY)
    }
}

/// The objective test of a [`StoppingRule`], fed `F(x_k)` as a solver goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectiveTest {
    last: Option<f64>,
}

impl ObjectiveTest {
    /// A test whose first comparison is against `F(x_0) = start`.
    pub fn from_start(start: f64) -> Self {
        Self { last: Some(start) }
    }

    /// Whether `F(x_k) = value`, after `k` iterations, ends the solve: at
    /// a check of `rule` (every [`OBJECTIVE_CHECK_EVERY`] iterations), `F` fell by at most
    /// `objective_tol * |F|` since the previous check (or rose: the method stalls).
    pub fn stops(&mut self, rule: &StoppingRule, k: usize, value: f64) -> bool {
        if !rule.objective_due(k) {
            return false;
        }
        let stop = self
            .last
            .is_some_and(|last| last - value <= rule.objective_tol * value.abs());
        self.last = Some(value);
        stop
    }
}

/// FISTA's momentum weights: `beta_k = (t_k - 1) / t_{k+1}` with
/// `t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2` from `t_0 = 1` (so `beta_0 = 0`); a restart
/// goes back to `t = 1`.
#[derive(Debug, Clone, Copy)]
pub struct MomentumSchedule {
    t: f64,
    beta: f64,
}

impl Default for MomentumSchedule {
    fn default() -> Self {
        Self { t: 1.0, beta: 0.0 }
    }
}

impl MomentumSchedule {
    /// The weight of `x_k - x_{k-1}` in the next extrapolated point.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// After an iteration: back to `beta = 0` on a restart, else one step further.
    pub fn advance(&mut self, restart: bool) {
        if restart {
            *self = Self::default();
        } else {
            let t_next = 0.5 * (1.0 + (1.0 + 4.0 * self.t * self.t).sqrt());
            self.beta = (self.t - 1.0) / t_next;
            self.t = t_next;
        }
    }
}

/// What a solve did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SolveReport {
    /// Gradient steps taken.
    pub iterations: usize,
    /// `F(x) = f(x) + g(x)` at the returned point.
    pub objective: f64,
    /// `F` at the start and after each iteration, when asked for
    /// (`trace[0]` = start, `trace[k]` = after `k` iterations).
    pub trace: Option<Vec<f64>>,
    /// FISTA momentum restarts (always 0 for the plain method).
    pub restarts: usize,
    /// Whether a tolerance test stopped the solve before `max_iterations`.
    pub converged: bool,
}

/// Plain proximal gradient: `x <- prox_{g/L}(x - grad f(x) / L)`.
///
/// With step `1/L` and `L >= lambda` (the gradient's Lipschitz constant) the objective
/// never increases: `F(x+) <= F(x) - (L - lambda/2) ||x+ - x||^2`.
/// The trace costs no extra product: `f(x_k)` comes with the gradient at `x_k`.
#[derive(Debug, Clone, Copy)]
pub struct ProximalGradient {
    /// Stopping rule.
    pub stop: StoppingRule,
    /// Record the objective after every iteration.
    pub record_trace: bool,
    /// Parallelism of the products and of the prox.
    pub par: Par,
}

/// FISTA (Beck and Teboulle 2009) for a quadratic `f`, made monotone by the
/// function-value restart of O'Donoghue and Candes (2015).
///
/// Step `z = prox_{g/L}(y - grad f(y) / L)` at the extrapolated point
/// `y = x_k + beta_k (x_k - x_{k-1})`. Since `f` is quadratic its gradient is affine, so
/// `grad f(y) = grad f(x_k) + beta_k (grad f(x_k) - grad f(x_{k-1}))` needs no product:
/// an iteration pays one product, `grad f(z) = H (z - W0)`, which also gives `F(z)`
/// exactly. If `F(z) > F(x_k)` the momentum overshot: `z` is replaced by the plain
/// step from `x_k` (one more product; that step never raises `F`, see
/// [`ProximalGradient`]) and the momentum restarts, so `F(x_k)` never increases. The
/// trace is free.
#[derive(Debug, Clone, Copy)]
pub struct Fista {
    /// Stopping rule.
    pub stop: StoppingRule,
    /// Record the objective after every iteration (free: `F(x_k)` is known).
    pub record_trace: bool,
    /// Parallelism of the products and of the prox.
    pub par: Par,
}

/// `F(x)`; `grad` is scratch.
fn objective(
    f: &impl Smooth,
    g: &impl Prox,
    x: MatRef<'_, f32>,
    grad: &mut Mat<f32>,
    par: Par,
) -> f64 {
    f.value_and_gradient(x, grad.as_mut(), par) + g.value(x)
}

/// `x <- prox_{step g}(from - step * grad)`. For a column-separable `g` the gradient
/// step and the prox run together on blocks of columns (in parallel under
/// `Par::Rayon`), each block still in cache when the prox reads it.
fn proximal_step(
    x: &mut Mat<f32>,
    from: MatRef<'_, f32>,
    grad: &Mat<f32>,
    step: f64,
    g: &impl Prox,
    par: Par,
) {
    let s = step as f32;
    let grad = grad.as_ref();
    if g.is_column_separable() {
        for_each_column_block(x.as_mut(), par, |j0, mut block| {
            let cols = block.ncols();
            zip!(
                block.rb_mut(),
                from.subcols(j0, cols),
                grad.subcols(j0, cols)
            )
            .for_each(|unzip!(o, x, g)| *o = *x - s * *g);
            g.prox(block, step, Par::Seq);
        });
    } else {
        zip!(x.as_mut(), from, grad).for_each(|unzip!(o, x, g)| *o = *x - s * *g);
        g.prox(x.as_mut(), step, par);
    }
}

/// `(||a - b||_F, ||b||_F)`.
fn change(a: &Mat<f32>, b: &Mat<f32>) -> (f64, f64) {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    zip!(a.as_ref(), b.as_ref()).for_each(|unzip!(a, b)| {
        let (a, b) = (*a as f64, *b as f64);
        d += (a - b) * (a - b);
        n += b * b;
    });
    (d.sqrt(), n.sqrt())
}

fn converged(stop: &StoppingRule, x: &Mat<f32>, prev: &Mat<f32>) -> bool {
    if stop.rel_tol <= 0.0 {
        return false;
    }
    let (d, n) = change(x, prev);
    d <= stop.rel_tol * n.max(f64::MIN_POSITIVE)
}

impl ProximalGradient {
    /// Minimises `f + g` from the starting point `x`, which is overwritten by the result.
    /// A constant `f` (`L = 0`) leaves `x` unchanged with zero iterations.
    pub fn solve(&self, f: &impl Smooth, g: &impl Prox, x: &mut Mat<f32>) -> SolveReport {
        let (rows, cols) = f.shape();
        let mut grad = Mat::<f32>::zeros(rows, cols);
        let mut prev = Mat::<f32>::zeros(rows, cols);
        let mut trace = self.record_trace.then(Vec::new);
        let lipschitz = f.lipschitz();
        let mut report = SolveReport::default();
        let mut test = ObjectiveTest::default();
        if lipschitz > 0.0 {
            let step = 1.0 / lipschitz;
            for k in 0..self.stop.max_iterations {
                if trace.is_some() || self.stop.objective_due(k) {
                    let fx = f.value_and_gradient(x.as_ref(), grad.as_mut(), self.par);
                    let value = fx + g.value(x.as_ref());
                    if let Some(t) = trace.as_mut() {
                        t.push(value);
                    }
                    if test.stops(&self.stop, k, value) {
                        report.converged = true;
                        break;
                    }
                } else {
                    f.gradient(x.as_ref(), grad.as_mut(), self.par);
                }
                std::mem::swap(&mut prev, x);
                proximal_step(x, prev.as_ref(), &grad, step, g, self.par);
                report.iterations += 1;
                if converged(&self.stop, x, &prev) {
                    report.converged = true;
                    break;
                }
            }
        }
        report.objective = objective(f, g, x.as_ref(), &mut grad, self.par);
        if let Some(t) = trace.as_mut().filter(|t| t.len() == report.iterations) {
            t.push(report.objective);
        }
        report.trace = trace;
        report
    }
}

impl Fista {
    /// Minimises `f + g` from the starting point `x`, which is overwritten by the result.
    /// A constant `f` (`L = 0`) leaves `x` unchanged with zero iterations.
    pub fn solve(&self, f: &Quadratic<'_>, g: &impl Prox, x: &mut Mat<f32>) -> SolveReport {
        let (rows, cols) = f.shape();
        let par = self.par;
        let mut grad = Mat::<f32>::zeros(rows, cols);
        let mut value = objective(f, g, x.as_ref(), &mut grad, par);
        let mut trace = self.record_trace.then(|| vec![value]);
        let mut report = SolveReport::default();
        let lipschitz = f.lipschitz();
        if lipschitz > 0.0 {
            let step = 1.0 / lipschitz;
            let mut test = ObjectiveTest::from_start(value);
            let (mut prev, mut grad_prev) = (x.clone(), grad.clone());
            let (mut z, mut grad_z) = (Mat::<f32>::zeros(rows, cols), Mat::zeros(rows, cols));
            let mut diff = Mat::<f32>::zeros(rows, cols);
            let mut schedule = MomentumSchedule::default();
            for _ in 0..self.stop.max_iterations {
                let beta = schedule.beta() as f32;
                let momentum = Momentum {
                    x: x.as_ref(),
                    prev: prev.as_ref(),
                    beta,
                };
                let mut step_from = |momentum: Momentum<'_>, z: &mut Mat<f32>| {
                    let grads = (grad.as_ref(), grad_prev.as_ref());
                    momentum.step(z, &mut diff, f.anchor(), grads, step, g, par);
                    f.value_and_gradient_at_offset(diff.as_ref(), grad_z.as_mut(), par)
                        + g.value(z.as_ref())
                };
                let mut value_z = step_from(momentum, &mut z);
                let restart = beta != 0.0 && value_z > value;
                if restart {
                    let plain = Momentum {
                        beta: 0.0,
                        ..momentum
                    };
                    value_z = step_from(plain, &mut z);
                }
                // x_{k-1} <- x_k <- z; the oldest buffers become the next scratch.
                std::mem::swap(&mut prev, x);
                std::mem::swap(x, &mut z);
                std::mem::swap(&mut grad_prev, &mut grad);
                std::mem::swap(&mut grad, &mut grad_z);
                value = value_z;
                report.iterations += 1;
                report.restarts += usize::from(restart);
                schedule.advance(restart);
                if let Some(t) = trace.as_mut() {
                    t.push(value);
                }
                if test.stops(&self.stop, report.iterations, value) {
                    report.converged = true;
                    break;
                }
                if converged(&self.stop, x, &prev) {
                    report.converged = true;
                    break;
                }
            }
        }
        report.objective = value;
        report.trace = trace;
        report
    }
}

/// FISTA's extrapolated point `y = x + beta (x - prev)`, never stored: formed entry by
/// entry where it is read.
#[derive(Clone, Copy)]
struct Momentum<'a> {
    x: MatRef<'a, f32>,
    prev: MatRef<'a, f32>,
    beta: f32,
}

impl Momentum<'_> {
    /// `z <- prox_{step g}(y - step grad f(y))` with
    /// `grad f(y) = grad + beta (grad - grad_prev)` (`f` quadratic; `grads` =
    /// `(grad, grad_prev)`), and `diff <- z - anchor`: column block by column block for a
    /// column-separable `g` (each block still in cache), as [`proximal_step`].
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        z: &mut Mat<f32>,
        diff: &mut Mat<f32>,
        anchor: MatRef<'_, f32>,
        (grad, grad_prev): (MatRef<'_, f32>, MatRef<'_, f32>),
        step: f64,
        g: &impl Prox,
        par: Par,
    ) {
        let (s, b) = (step as f32, self.beta);
        let (x, prev) = (self.x, self.prev);
        let fill = |j0: usize, block: MatMut<'_, f32>| {
            let cols = block.ncols();
            zip!(
                block,
                x.subcols(j0, cols),
                prev.subcols(j0, cols),
                grad.subcols(j0, cols),
                grad_prev.subcols(j0, cols)
            )
            .for_each(|unzip!(z, x, p, g, gp)| {
                let y = *x + b * (*x - *p);
                let gy = *g + b * (*g - *gp);
                *z = y - s * gy;
            });
        };
        let offset = |j0: usize, d: MatMut<'_, f32>, z: MatRef<'_, f32>| {
            let cols = d.ncols();
            zip!(d, z, anchor.subcols(j0, cols)).for_each(|unzip!(d, z, a)| *d = *z - *a);
        };
        if g.is_column_separable() {
            for_each_column_block_pair(z.as_mut(), diff.as_mut(), par, |j0, mut block, d| {
                fill(j0, block.rb_mut());
                g.prox(block.rb_mut(), step, Par::Seq);
                offset(j0, d, block.rb());
            });
        } else {
            fill(0, z.as_mut());
            g.prox(z.as_mut(), step, par);
            offset(0, diff.as_mut(), z.as_ref());
        }
    }
}
