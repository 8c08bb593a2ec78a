//! Proximal operators: l1 (soft threshold), l-infinity per column or per group of rows
//! within a column, and the box indicator.

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{MatMut, MatRef, Par};
use l1_projection::{Algorithm, Workspace, l1_ball_threshold_in};
use rayon::prelude::*;

use crate::Prox;

/// Columns per block in [`for_each_column_block`]: 32 columns of a few thousand f32
/// stay within L2 cache between the passes that touch them.
pub(crate) const BLOCK_COLS: usize = 32;

/// Runs `f(first_column, block)` on consecutive blocks of [`BLOCK_COLS`] columns of `m`,
/// in parallel when `par` asks for it.
pub(crate) fn for_each_column_block(
    m: MatMut<'_, f32>,
    par: Par,
    f: impl Fn(usize, MatMut<'_, f32>) + Sync + Send,
) {
    match par {
        Par::Seq => {
            let mut m = m;
            let ncols = m.ncols();
            for j0 in (0..ncols).step_by(BLOCK_COLS) {
                f(j0, m.rb_mut().subcols_mut(j0, BLOCK_COLS.min(ncols - j0)));
            }
        }
        Par::Rayon(_) => {
            if m.ncols() > 0 {
                m.par_col_chunks_mut(BLOCK_COLS)
                    .enumerate()
                    .for_each(|(b, block)| f(b * BLOCK_COLS, block));
            }
        }
    }
}

/// [`for_each_column_block`] over two matrices of one shape at once: `f(first_column,
/// block of a, block of b)`.
pub(crate) fn for_each_column_block_pair(
    a: MatMut<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    f: impl Fn(usize, MatMut<'_, f32>, MatMut<'_, f32>) + Sync + Send,
) {
    match par {
        Par::Seq => {
            let (mut a, mut b) = (a, b);
            let ncols = a.ncols();
            for j0 in (0..ncols).step_by(BLOCK_COLS) {
                let cols = BLOCK_COLS.min(ncols - j0);
                f(
                    j0,
                    a.rb_mut().subcols_mut(j0, cols),
                    b.rb_mut().subcols_mut(j0, cols),
                );
            }
        }
        Par::Rayon(_) => {
            if a.ncols() > 0 {
                a.par_col_chunks_mut(BLOCK_COLS)
                    .zip(b.par_col_chunks_mut(BLOCK_COLS))
                    .enumerate()
                    .for_each(|(k, (a, b))| f(k * BLOCK_COLS, a, b));
            }
        }
    }
}

/// Runs `f` on every column of `m` as a contiguous slice, in parallel when `par` asks
/// for it, with one `init()` state per worker. Columns that are not contiguous (a
/// strided view) are copied out and back.
pub(crate) fn for_each_column<S>(
    m: MatMut<'_, f32>,
    par: Par,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, &mut [f32]) + Sync + Send,
) {
    let run = |state: &mut S, mut col: faer::col::ColMut<'_, f32>| {
        if let Some(c) = col.rb_mut().try_as_col_major_mut() {
            f(state, c.as_slice_mut());
            return;
        }
        let mut buf: Vec<f32> = col.rb().iter().copied().collect();
        f(state, &mut buf);
        col.iter_mut().zip(&buf).for_each(|(x, &b)| *x = b);
    };
    match par {
        Par::Seq => {
            let mut state = init();
            m.col_iter_mut().for_each(|c| run(&mut state, c));
        }
        Par::Rayon(_) => m.par_col_iter_mut().for_each_init(init, run),
    }
}

/// `g(x) = weight * ||x||_1` (sum over all entries); prox = soft threshold at
/// `step * weight`.
#[derive(Debug, Clone, Copy)]
pub struct L1Norm {
    /// The weight `lambda >= 0` in front of the norm.
    pub weight: f64,
}

impl Prox for L1Norm {
    fn is_column_separable(&self) -> bool {
        true
    }

    fn prox(&self, v: MatMut<'_, f32>, step: f64, par: Par) {
        let t = (step * self.weight) as f32;
        for_each_column(
            v,
            par,
            || (),
            |_, col| {
                col.iter_mut()
                    .for_each(|x| *x = x.signum() * (x.abs() - t).max(0.0));
            },
        );
    }

    fn value(&self, x: MatRef<'_, f32>) -> f64 {
        self.weight * sum_over_columns(x, |c| c.iter().map(|v| v.abs() as f64).sum())
    }
}

/// `g(W) = weight * sum over groups of ||w_group||_inf`, where a group is a run of
/// `group_rows` consecutive rows within one column (`None`: the whole column, i.e.
/// MagR per channel).
///
/// The prox of `t ||.||_inf` (`t = step * weight`) is, by Moreau's identity,
/// `v - P_{||.||_1 <= t}(v)`: zero when `||v||_1 <= t`, else `clamp(v, -tau, tau)` with
/// the l1-ball threshold `tau` from [`l1_projection`].
#[derive(Debug, Clone, Copy)]
pub struct LinfNorm {
    /// The weight `lambda >= 0` in front of the sum of norms.
    pub weight: f64,
    /// Rows per group (the last group of a column is shorter when it does not divide the
    /// number of rows). `None` = one group per column.
    pub group_rows: Option<usize>,
}

impl LinfNorm {
    fn groups<'s>(&self, col: &'s mut [f32]) -> std::slice::ChunksMut<'s, f32> {
        let g = self.group_rows.unwrap_or(col.len()).max(1);
        col.chunks_mut(g)
    }
}

impl Prox for LinfNorm {
    fn is_column_separable(&self) -> bool {
        true
    }

    fn prox(&self, v: MatMut<'_, f32>, step: f64, par: Par) {
        let t = (step * self.weight) as f32;
        if t <= 0.0 {
            return; // prox of the zero function is the identity
        }
        for_each_column(v, par, Workspace::new, |ws, col| {
            for group in self.groups(col) {
                // Finite input and positive t cannot fail; a NaN would, and then the
                // group is left as it is (the solvers validate their inputs up front).
                if let Ok(tau) = l1_ball_threshold_in(group, t, Algorithm::Condat, ws) {
                    if tau > 0.0 {
                        group.iter_mut().for_each(|x| *x = x.clamp(-tau, tau));
                    } else {
                        group.fill(0.0);
                    }
                }
            }
        });
    }

    fn value(&self, x: MatRef<'_, f32>) -> f64 {
        let g = self.group_rows.unwrap_or(x.nrows()).max(1);
        self.weight * sum_over_columns(x, |c| c.chunks(g).map(|grp| f64::from(max_abs(grp))).sum())
    }
}

/// Indicator of the box `lower <= x <= upper` (entrywise); prox = clamp.
#[derive(Debug, Clone, Copy)]
pub struct BoxConstraint {
    /// Lower bound of every entry.
    pub lower: f32,
    /// Upper bound of every entry (`>= lower`).
    pub upper: f32,
}

impl Prox for BoxConstraint {
    fn is_column_separable(&self) -> bool {
        true
    }

    fn prox(&self, v: MatMut<'_, f32>, _step: f64, par: Par) {
        let (lo, hi) = (self.lower, self.upper);
        for_each_column(
            v,
            par,
            || (),
            |_, col| col.iter_mut().for_each(|x| *x = x.clamp(lo, hi)),
        );
    }

    fn value(&self, x: MatRef<'_, f32>) -> f64 {
        let inside = x
            .col_iter()
            .all(|c| c.iter().all(|&v| v >= self.lower && v <= self.upper));
        if inside { 0.0 } else { f64::INFINITY }
    }
}

/// Sums `f(column)` over the columns of `x`, each column given as a contiguous slice.
fn sum_over_columns(x: MatRef<'_, f32>, f: impl Fn(&[f32]) -> f64) -> f64 {
    x.col_iter()
        .map(|c| match c.try_as_col_major() {
            Some(c) => f(c.as_slice()),
            None => f(&c.iter().copied().collect::<Vec<_>>()),
        })
        .sum()
}

/// `max |v_i|` (0 for an empty slice), over 8 independent lanes that the compiler
/// vectorises.
pub(crate) fn max_abs(v: &[f32]) -> f32 {
    const LANES: usize = 8;
    let chunks = v.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(0.0f32, |m, a| m.max(a.abs()));
    let mut lanes = [0.0f32; LANES];
    for c in chunks {
        for k in 0..LANES {
            lanes[k] = lanes[k].max(c[k].abs());
        }
    }
    lanes.iter().fold(tail, |m, &a| m.max(a))
}
