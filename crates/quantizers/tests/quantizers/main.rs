//! Tests of grids, RTN, OPTQ, coordinate descent and packing against naive references
//! written here (`reference.rs`), with fixed seeds for the matrices.
// The references are deliberately naive index loops.
#![allow(clippy::needless_range_loop)]

mod cd;
mod errors;
mod ggml;
mod grid_rtn;
mod kquant;
mod optq;
mod pack;
mod reference;

use faer::Mat;
use quantizers::{LayerProblem, QuantizedLinear};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

/// Weights ~ N(0, 0.05^2), in x out.
pub fn random_weights(n: usize, m: usize, seed: u64) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.05).unwrap();
    Mat::from_fn(n, m, |_, _| normal.sample(&mut rng))
}

/// `H = X^T X` over `tokens` rows of strongly correlated features (one shared factor
/// with input-dependent loadings, plus noise), summed in f64.
pub fn correlated_hessian(n: usize, tokens: usize, seed: u64) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let x: Vec<Vec<f64>> = (0..tokens)
        .map(|_| {
            let shared: f64 = normal.sample(&mut rng);
            (0..n)
                .map(|i| shared * (1.0 + i as f64 / n as f64) + 0.3 * normal.sample(&mut rng))
                .collect()
        })
        .collect();
    Mat::from_fn(n, n, |i, k| {
        x.iter().map(|r| r[i] * r[k]).sum::<f64>() as f32
    })
}

/// A diagonal `H` with entries 1..=5.
pub fn diagonal_hessian(n: usize) -> Mat<f32> {
    Mat::from_fn(n, n, |i, k| if i == k { 1.0 + (i % 5) as f32 } else { 0.0 })
}

/// `H` with input `i` dead (zero row and column).
pub fn kill_input(h: &mut Mat<f32>, i: usize) {
    for k in 0..h.nrows() {
        h[(i, k)] = 0.0;
        h[(k, i)] = 0.0;
    }
}

pub fn problem<'a>(w: &'a Mat<f32>, h: &'a Mat<f32>) -> LayerProblem<'a> {
    LayerProblem::new(w.as_ref(), h.as_ref())
}

/// Every dequantized value is `scale * (code - zero)` of its grid (the formula written
/// out here), with the code in range.
pub fn assert_on_grid(q: &QuantizedLinear) {
    for j in 0..q.outputs() {
        for i in 0..q.inputs() {
            let grid = q.grid(i, j);
            let code = q.code(i, j);
            assert!(code <= grid.maxq, "code {code} at ({i}, {j})");
            assert_eq!(
                q.dequantized()[(i, j)],
                grid.scale * (code as f32 - grid.zero as f32),
                "({i}, {j})"
            );
        }
    }
}

/// Largest absolute difference between `q`'s dequantized weights and `expected`
/// (`[j * n + i]`).
pub fn max_difference(q: &QuantizedLinear, expected: &[f64]) -> f64 {
    let n = q.inputs();
    let mut worst = 0.0f64;
    for j in 0..q.outputs() {
        for i in 0..n {
            worst = worst.max((q.dequantized()[(i, j)] as f64 - expected[j * n + i]).abs());
        }
    }
    worst
}
