//! Slow, obviously-correct references: the grid formula of the design guide in f32, and
//! OPTQ, coordinate descent and the losses in f64 with naive loops.

use faer::Mat;

/// A grid as the reference quantizer computes it (all in f32, as the reference does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefGrid {
    pub scale: f32,
    pub zero: f32,
    pub maxq: f32,
}

/// Settings of a reference grid.
#[derive(Debug, Clone, Copy)]
pub struct RefSpec {
    pub bits: u32,
    pub symmetric: bool,
    pub beta: f32,
}

impl RefSpec {
    /// `xmin = min(min, 0)`, `xmax = max(max, 0)`; symmetric: `xmax = max(|xmin|, xmax)`,
    /// `xmin = -xmax` if `xmin < 0`; `[-1, 1]` if both 0; `scale = beta (xmax - xmin) / maxq`
    /// rounded to f16; `zero = round(-xmin / scale)` or `(maxq + 1) / 2`.
    pub fn fit(&self, values: &[f32]) -> RefGrid {
        let maxq = ((1u32 << self.bits) - 1) as f32;
        let mut xmin = 0.0f32;
        let mut xmax = 0.0f32;
        for &v in values {
            if v < xmin {
                xmin = v;
            }
            if v > xmax {
                xmax = v;
            }
        }
        if self.symmetric {
            if xmin.abs() > xmax {
                xmax = xmin.abs();
            }
            if xmin < 0.0 {
                xmin = -xmax;
            }
        }
        if xmin == 0.0 && xmax == 0.0 {
            xmin = -1.0;
            xmax = 1.0;
        }
        // Rounded to f16, as checkpoints store it.
        let scale = half::f16::from_f32(self.beta * (xmax - xmin) / maxq).to_f32();
        let scale = scale.max(half::f16::from_bits(1).to_f32());
        let zero = if self.symmetric {
            (maxq + 1.0) / 2.0
        } else {
            (-xmin / scale).round_ties_even()
        };
        RefGrid { scale, zero, maxq }
    }
}

impl RefGrid {
    /// `clamp(round(x / scale) + zero, 0, maxq)`.
    pub fn code(&self, x: f32) -> f32 {
        ((x / self.scale).round_ties_even() + self.zero).clamp(0.0, self.maxq)
    }
    /// `scale * (q - zero)`.
    pub fn value(&self, q: f32) -> f32 {
        self.scale * (q - self.zero)
    }
    pub fn round(&self, x: f32) -> f32 {
        self.value(self.code(x))
    }
}

/// OPTQ settings for the reference.
#[derive(Debug, Clone, Copy)]
pub struct RefOptq {
    pub spec: RefSpec,
    pub group_size: Option<usize>,
    pub act_order: bool,
    pub static_groups: bool,
    pub damping: f64,
    /// Only for when dynamic groups are fitted: on the weights as they were at the last
    /// multiple of `block` inputs (the reference code's `W`).
    pub block: usize,
}

/// Naive OPTQ: inputs one at a time in processing order; after rounding input `i`, the
/// not-yet-quantized inputs `k` get `w_k -= (w_i - q_i) Hinv[i, k] / Hinv[i, i]` and the
/// inverse Hessian is downdated, `Hinv <- Hinv - Hinv[:, i] Hinv[i, :] / Hinv[i, i]`.
/// Returns the dequantized weights `[j * n + i]` and `g_idx`.
pub fn optq(w: &Mat<f32>, h: &Mat<f32>, cfg: RefOptq) -> (Vec<f64>, Vec<usize>) {
    let (n, m) = (w.nrows(), w.ncols());
    let gs = cfg.group_size.unwrap_or(n);
    let grouped = cfg.group_size.is_some();
    let dead: Vec<bool> = (0..n).map(|i| h[(i, i)] == 0.0).collect();
    let mut hh: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|k| h[(i, k)] as f64).collect())
        .collect();
    let mut ww: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..m).map(|j| w[(i, j)] as f64).collect())
        .collect();
    // Per channel: grids of the weights as given; then dead inputs.
    let mut grids: Vec<Vec<RefGrid>> = vec![
        (0..m)
            .map(|j| cfg.spec.fit(&(0..n).map(|i| w[(i, j)]).collect::<Vec<_>>()))
            .collect();
        n.div_ceil(gs)
    ];
    for i in 0..n {
        if dead[i] {
            hh[i][i] = 1.0;
            ww[i].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let column = |ww: &Vec<Vec<f64>>, inputs: &[usize], j: usize| -> Vec<f32> {
        inputs.iter().map(|&i| ww[i][j] as f32).collect()
    };
    if grouped && cfg.static_groups {
        for g in 0..n.div_ceil(gs) {
            let inputs: Vec<usize> = (g * gs..((g + 1) * gs).min(n)).collect();
            for j in 0..m {
                grids[g][j] = cfg.spec.fit(&column(&ww, &inputs, j));
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.act_order {
        order.sort_by(|&a, &b| hh[b][b].partial_cmp(&hh[a][a]).unwrap());
    }
    let mean = (0..n).map(|i| hh[i][i]).sum::<f64>() / n as f64;
    for i in 0..n {
        hh[i][i] += cfg.damping * mean;
    }
    let mut hinv = invert(hh);
    let mut snapshot = ww.clone();
    let mut g_idx = vec![0; n];
    let mut q = vec![0.0; n * m];
    for (pos, &i) in order.iter().enumerate() {
        if pos % cfg.block == 0 {
            snapshot = ww.clone();
        }
        let g = match (grouped, cfg.static_groups) {
            (false, _) => 0,
            (true, true) => i / gs,
            (true, false) => pos / gs,
        };
        g_idx[i] = g;
        if grouped && !cfg.static_groups && pos % gs == 0 {
            for j in 0..m {
                let inputs = &order[pos..(pos + gs).min(n)];
                grids[g][j] = cfg.spec.fit(&column(&snapshot, inputs, j));
            }
        }
        let d = hinv[i][i];
        for j in 0..m {
            let qij = grids[g][j].round(ww[i][j] as f32) as f64;
            q[j * n + i] = qij;
            let err = (ww[i][j] - qij) / d;
            for &k in &order[pos + 1..] {
                ww[k][j] -= err * hinv[i][k];
            }
        }
        let col: Vec<f64> = (0..n).map(|a| hinv[a][i]).collect();
        let row = hinv[i].clone();
        for a in 0..n {
            for b in 0..n {
                hinv[a][b] -= col[a] * row[b] / d;
            }
        }
    }
    (q, g_idx)
}

/// Gauss-Jordan inverse of a symmetric positive definite matrix (no pivoting needed).
fn invert(mut a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut inv: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|k| if i == k { 1.0 } else { 0.0 }).collect())
        .collect();
    for c in 0..n {
        let p = a[c][c];
        for k in 0..n {
            a[c][k] /= p;
            inv[c][k] /= p;
        }
        for r in 0..n {
            if r != c {
                let f = a[r][c];
                for k in 0..n {
                    a[r][k] -= f * a[c][k];
                    inv[r][k] -= f * inv[c][k];
                }
            }
        }
    }
    inv
}

/// `tr(E^T (H + lambda I) E)` with `E = W0 - Q`, `q` as `[j * n + i]`, in f64.
pub fn objective(w0: &Mat<f32>, q: &[f64], h: &Mat<f32>, lambda: f64) -> f64 {
    let (n, m) = (w0.nrows(), w0.ncols());
    let mut total = 0.0;
    for j in 0..m {
        let e: Vec<f64> = (0..n).map(|i| w0[(i, j)] as f64 - q[j * n + i]).collect();
        for a in 0..n {
            for b in 0..n {
                total += e[a] * h[(a, b)] as f64 * e[b];
            }
            total += lambda * e[a] * e[a];
        }
    }
    total
}

/// The dequantized weights of a result, `[j * n + i]`, in f64.
pub fn dequantized(q: &quantizers::QuantizedLinear) -> Vec<f64> {
    let n = q.inputs();
    (0..q.outputs() * n)
        .map(|t| q.dequantized()[(t % n, t / n)] as f64)
        .collect()
}

/// Naive coordinate descent from `start` (`[j * n + i]`), each output on its own: for
/// each input in `order(j)`, `r = sum_k A_ik E_kj` from scratch, the entry set to
/// `round(W0_ij + (r - A_ii E_ij) / A_ii)` on its grid `grid(i, j)`.
pub fn coordinate_descent(
    w0: &Mat<f32>,
    start: &[f64],
    h: &Mat<f32>,
    lambda: f64,
    sweeps: usize,
    order: impl Fn(usize) -> Vec<usize>,
    grid: impl Fn(usize, usize) -> RefGrid,
) -> Vec<f64> {
    let (n, m) = (w0.nrows(), w0.ncols());
    let a = |i: usize, k: usize| h[(i, k)] as f64 + if i == k { lambda } else { 0.0 };
    let mut q = start.to_vec();
    for j in 0..m {
        let mut e: Vec<f64> = (0..n).map(|i| w0[(i, j)] as f64 - q[j * n + i]).collect();
        for _ in 0..sweeps {
            for i in order(j) {
                if a(i, i) <= 0.0 {
                    continue;
                }
                let r: f64 = (0..n).map(|k| a(i, k) * e[k]).sum();
                let target = w0[(i, j)] as f64 + (r - a(i, i) * e[i]) / a(i, i);
                let value = grid(i, j).round(target as f32) as f64;
                e[i] = w0[(i, j)] as f64 - value;
                q[j * n + i] = value;
            }
        }
    }
    q
}
