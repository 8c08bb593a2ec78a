//! Proximal gradient (fixed step `1/L`) and FISTA with adaptive restart.

use faer::reborrow::ReborrowMut;
use faer::{Mat, MatRef, Par, unzip, zip};

use crate::prox::for_each_column_block;
use crate::{Prox, Smooth};

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
    fn objective_due(&self, k: usize) -> bool {
        self.objective_tol > 0.0 && k.is_multiple_of(OBJECTIVE_CHECK_EVERY)
    }
}

/// The objective test of a [`StoppingRule`]: `F` at its last evaluation.
#[derive(Debug, Default)]
struct ObjectiveTest {
    last: Option<f64>,
}

impl ObjectiveTest {
    /// Whether `F(x_k) = value` ends the solve: it fell by at most `tol * |F|` since the
    /// last evaluation (or rose: the method stalls).
    fn stops(&mut self, value: f64, tol: f64) -> bool {
        let stop = self
            .last
            .is_some_and(|last| last - value <= tol * value.abs());
        self.last = Some(value);
        stop
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

/// FISTA (Beck and Teboulle 2009) with the gradient-based adaptive restart of
/// O'Donoghue and Candes (2015): momentum is reset whenever
/// `<y_k - x_{k+1}, x_{k+1} - x_k> > 0`, which needs no extra product.
/// Recording the trace costs one extra product per iteration (`F` at `x_k`, not at the
/// extrapolated point `y_k` where the gradient is taken).
#[derive(Debug, Clone, Copy)]
pub struct Fista {
    /// Stopping rule.
    pub stop: StoppingRule,
    /// Record the objective after every iteration (one extra product each).
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
                let due = self.stop.objective_due(k);
                if trace.is_some() || due {
                    let fx = f.value_and_gradient(x.as_ref(), grad.as_mut(), self.par);
                    let value = fx + g.value(x.as_ref());
                    if let Some(t) = trace.as_mut() {
                        t.push(value);
                    }
                    if due && test.stops(value, self.stop.objective_tol) {
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
    pub fn solve(&self, f: &impl Smooth, g: &impl Prox, x: &mut Mat<f32>) -> SolveReport {
        let (rows, cols) = f.shape();
        let mut grad = Mat::<f32>::zeros(rows, cols);
        let mut prev = x.clone();
        let mut y = x.clone();
        let mut trace = self.record_trace.then(Vec::new);
        let mut report = SolveReport::default();
        let mut test = ObjectiveTest::default();
        let lipschitz = f.lipschitz();
        if lipschitz > 0.0 {
            let step = 1.0 / lipschitz;
            if trace.is_some() || self.stop.objective_tol > 0.0 {
                let value = objective(f, g, x.as_ref(), &mut grad, self.par);
                test.last = Some(value);
                if let Some(t) = trace.as_mut() {
                    t.push(value);
                }
            }
            let mut t_k = 1.0f64;
            for _ in 0..self.stop.max_iterations {
                f.gradient(y.as_ref(), grad.as_mut(), self.par);
                std::mem::swap(&mut prev, x);
                proximal_step(x, y.as_ref(), &grad, step, g, self.par);
                report.iterations += 1;
                // Restart test <y - x, x - prev> > 0, then the extrapolation into y.
                let mut s = 0.0f64;
                zip!(y.as_ref(), x.as_ref(), prev.as_ref()).for_each(|unzip!(y, x, p)| {
                    s += (*y as f64 - *x as f64) * (*x as f64 - *p as f64);
                });
                if s > 0.0 {
                    report.restarts += 1;
                    t_k = 1.0;
                    y.copy_from(x.as_ref());
                } else {
                    let t_next = 0.5 * (1.0 + (1.0 + 4.0 * t_k * t_k).sqrt());
                    let beta = ((t_k - 1.0) / t_next) as f32;
                    zip!(y.as_mut(), x.as_ref(), prev.as_ref())
                        .for_each(|unzip!(y, x, p)| *y = *x + beta * (*x - *p));
                    t_k = t_next;
                }
                let due = self.stop.objective_due(report.iterations);
                if trace.is_some() || due {
                    let value = objective(f, g, x.as_ref(), &mut grad, self.par);
                    if let Some(t) = trace.as_mut() {
                        t.push(value);
                    }
                    if due && test.stops(value, self.stop.objective_tol) {
                        report.converged = true;
                        break;
                    }
                }
                if converged(&self.stop, x, &prev) {
                    report.converged = true;
                    break;
                }
            }
        }
        report.objective = objective(f, g, x.as_ref(), &mut grad, self.par);
        if let Some(t) = trace.as_mut().filter(|t| t.is_empty()) {
            t.push(report.objective);
        }
        report.trace = trace;
        report
    }
}
