//! Grids against the formula, and RTN.

use faer::{Mat, Par};
use proptest::prelude::*;
use quantizers::{GridSpec, Quantizer, Rtn, reference_beta};

use crate::reference::RefSpec;
use crate::{assert_on_grid, diagonal_hessian, problem, random_weights};

fn spec_strategy() -> impl Strategy<Value = (u32, bool, f32)> {
    (
        prop::sample::select(vec![2u32, 3, 4, 8]),
        any::<bool>(),
        prop::sample::select(vec![1.0f32, 0.95, 0.9, 0.8, 0.5]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `fit` and `code` agree bit for bit with the formula written out in the test, for
    /// any values (including all-zero, all-positive and all-negative groups) and any `x`,
    /// ties included.
    #[test]
    fn grid_matches_the_formula(
        (bits, symmetric, beta) in spec_strategy(),
        values in prop::collection::vec(prop_oneof![Just(0.0f32), -2.0f32..2.0, 0.0f32..1.0, -1.0f32..0.0], 1..20),
        x in -3.0f32..3.0,
        tie in -20i32..300,
    ) {
        let spec = GridSpec::new(bits, None, symmetric, beta).unwrap();
        let grid = spec.fit(values.iter().copied());
        let expected = RefSpec { bits, symmetric, beta }.fit(&values);
        prop_assert_eq!(grid.scale, expected.scale);
        prop_assert_eq!(grid.zero as f32, expected.zero);
        prop_assert_eq!(grid.maxq as f32, expected.maxq);
        let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        prop_assert_eq!(spec.fit_range(lo, hi), grid);
        // A point in the range and an exact tie between two grid points.
        let tie_point = grid.scale * (tie as f32 + 0.5);
        for x in [x, tie_point, -tie_point] {
            prop_assert_eq!(grid.code(x) as f32, expected.code(x), "x = {}", x);
            prop_assert_eq!(grid.round(x), expected.round(x));
        }
    }

    /// RTN: every value on its grid, codes as the formula gives them per group, and inside
    /// a grid's range the error is at most half a step.
    #[test]
    fn rtn_is_the_formula_per_group(
        seed in any::<u64>(),
        (bits, symmetric, beta) in spec_strategy(),
        group in prop::sample::select(vec![None, Some(4usize), Some(8), Some(12), Some(32), Some(40)]),
        m in 1usize..6,
        n in prop::sample::select(vec![30usize, 32]),
    ) {
        let w = random_weights(n, m, seed);
        let h = diagonal_hessian(n);
        let spec = GridSpec::new(bits, group, symmetric, beta).unwrap();
        let q = Rtn { spec, par: Par::Seq }.quantize(&problem(&w, &h)).unwrap();
        assert_on_grid(&q);
        let gs = group.unwrap_or(n);
        // A group size that does not divide the inputs leaves the last group shorter.
        prop_assert_eq!(q.groups(), n.div_ceil(gs));
        let reference = RefSpec { bits, symmetric, beta };
        for j in 0..m {
            for g in 0..n.div_ceil(gs) {
                let inputs = g * gs..((g + 1) * gs).min(n);
                let values: Vec<f32> = inputs.clone().map(|i| w[(i, j)]).collect();
                let grid = reference.fit(&values);
                for i in inputs {
                    prop_assert_eq!(q.g_idx()[i] as usize, g);
                    prop_assert_eq!(q.code(i, j) as f32, grid.code(w[(i, j)]));
                    let x = w[(i, j)];
                    if x >= grid.value(0.0) && x <= grid.value(grid.maxq) {
                        // Half a step, plus the f32 rounding of `x / scale` and of the difference.
                        let bound = 0.5 * grid.scale + 4.0 * f32::EPSILON * x.abs();
                        prop_assert!((x - q.dequantized()[(i, j)]).abs() <= bound);
                    }
                }
            }
        }
    }
}

#[test]
fn grid_examples_by_hand() {
    // Scales are rounded to the nearest f16 (the values below by hand: f16 has 10 stored
    // mantissa bits, so in [2^-5, 2^-4) the step is 2^-15).
    // Asymmetric 4 bits: range [-0.3, 0.5], 0.8 / 15 = 0.053333 -> 1748 * 2^-15 =
    // 0.0533447265625; zero round(0.3 / scale) = round(5.6238) = 6.
    let spec = GridSpec::new(4, None, false, 1.0).unwrap();
    let g = spec.fit([-0.3f32, 0.1, 0.5]);
    assert_eq!(g.scale, 1748.0 / 32768.0);
    assert_eq!(g.zero, 6);
    // Symmetric: xmax = 0.5, range [-0.5, 0.5], 1 / 15 -> 2184 * 2^-15 = 0.066650390625, zero 8.
    let s = GridSpec::new(4, None, true, 1.0)
        .unwrap()
        .fit([-0.3f32, 0.1, 0.5]);
    assert_eq!((s.scale, s.zero), (2184.0 / 32768.0, 8));
    // All zeros: range [-1, 1], 2 / 15 -> 1092 * 2^-13 = 0.13330078125, just below 2 / 15,
    // so -xmin / scale = 7.5018 and the zero point is 8.
    let z = spec.fit([0.0f32; 4]);
    assert_eq!((z.scale, z.zero), (1092.0 / 8192.0, 8));
    // All positive: xmin = 0, zero point 0.
    assert_eq!(spec.fit([0.2f32, 0.4]).zero, 0);
    // Shrink: beta scales the step, 0.9 * 0.35 / 7 = 0.045 -> 1475 * 2^-15; the zero point
    // can pass maxq (0.35 / scale = 7.775 -> 8).
    let b = GridSpec::new(3, None, false, 0.9)
        .unwrap()
        .fit([-0.35f32, 0.0]);
    assert_eq!(b.scale, 1475.0 / 32768.0);
    assert_eq!(b.zero, 8);
    // A step below f16's smallest value becomes that value (2^-24), not zero.
    let tiny = spec.fit([0.0f32, 1e-9]);
    assert_eq!(tiny.scale, 2f32.powi(-24));
    // Ties go to even: scale 1, zero 0.
    let t = GridSpec::new(2, None, false, 1.0)
        .unwrap()
        .fit([0.0f32, 3.0]);
    assert_eq!((t.scale, t.zero), (1.0, 0));
    assert_eq!(
        (
            t.code(0.5),
            t.code(1.5),
            t.code(2.5),
            t.code(-0.5),
            t.code(9.0)
        ),
        (0, 2, 2, 0, 3)
    );
}

#[test]
fn reference_beta_table() {
    assert_eq!(reference_beta(4, None), 1.0);
    assert_eq!(reference_beta(3, None), 0.9);
    assert_eq!(reference_beta(2, None), 0.8);
    assert_eq!(reference_beta(8, None), 1.0);
    for bits in [2, 3, 4] {
        assert_eq!(reference_beta(bits, Some(128)), 0.95);
    }
    assert_eq!(reference_beta(8, Some(128)), 1.0);
    assert_eq!(reference_beta(3, Some(64)), 0.9);
    let spec = GridSpec::reference(2, Some(128)).unwrap();
    assert_eq!((spec.beta(), spec.symmetric()), (0.95, false));
}

/// Weights given through a strided (transposed) view quantize as the same weights stored
/// column-major.
#[test]
fn rtn_reads_strided_weights() {
    let w = random_weights(16, 5, 3);
    let wt = Mat::<f32>::from_fn(5, 16, |j, i| w[(i, j)]);
    let h = diagonal_hessian(16);
    let rtn = Rtn {
        spec: GridSpec::reference(3, Some(8)).unwrap(),
        par: Par::Seq,
    };
    let a = rtn.quantize(&problem(&w, &h)).unwrap();
    let b = rtn
        .quantize(&quantizers::LayerProblem::new(wt.transpose(), h.as_ref()))
        .unwrap();
    assert_eq!(a, b);
}
