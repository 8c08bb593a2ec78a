//! Coordinate descent against its naive reference, and its objective.

use faer::{Mat, Par};
use proptest::prelude::*;
use quantizers::{
    CoordinateDescent, GridSpec, LayerProblem, Optq, Quantizer, Rtn, SweepOrder, reference_lambda,
    refine,
};

use crate::reference::{self, RefGrid};
use crate::{assert_on_grid, correlated_hessian, kill_input, max_difference, random_weights};

fn ref_grid(q: &quantizers::QuantizedLinear, i: usize, j: usize) -> RefGrid {
    let g = q.grid(i, j);
    RefGrid {
        scale: g.scale,
        zero: g.zero as f32,
        maxq: g.maxq as f32,
    }
}

/// The greedy order of output `j`: inputs by decreasing `|W0_ij| sqrt(H_ii)`, ties in
/// input order.
fn greedy_order(w0: &Mat<f32>, h: &Mat<f32>, j: usize) -> Vec<usize> {
    let score = |i: usize| w0[(i, j)].abs() * h[(i, i)].max(0.0).sqrt();
    let mut order: Vec<usize> = (0..w0.nrows()).collect();
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    order
}

/// Sweeps from an OPTQ start equal the naive f64 reference (residual recomputed from
/// scratch at every step), in both orders, with and without damping, with a dead input,
/// across block boundaries (n = 160 > 128).
#[test]
fn sweeps_equal_the_naive_reference() {
    let (n, m) = (160, 5);
    for (case, order) in [SweepOrder::Natural, SweepOrder::Greedy]
        .into_iter()
        .enumerate()
    {
        for lambda in [0.0, 0.5] {
            let w0 = random_weights(n, m, 30 + case as u64);
            let shrunk = Mat::<f32>::from_fn(n, m, |i, j| 0.9 * w0[(i, j)]);
            let mut h = correlated_hessian(n, 400, 40 + case as u64);
            kill_input(&mut h, 17);
            let p = LayerProblem::new(shrunk.as_ref(), h.as_ref()).with_original(w0.as_ref());
            let spec = GridSpec::reference(3, Some(32)).unwrap();
            let optq = Optq {
                par: Par::Seq,
                ..Optq::new(spec)
            };
            let start = optq.quantize(&p).unwrap();
            let lambda = lambda * reference_lambda(h.as_ref());
            let refined = CoordinateDescent {
                optq,
                sweeps: 2,
                lambda: Some(lambda),
                order,
            }
            .quantize(&p)
            .unwrap();
            assert_on_grid(&refined);
            let expected = reference::coordinate_descent(
                &w0,
                &reference::dequantized(&start),
                &h,
                lambda,
                2,
                |j| match order {
                    SweepOrder::Natural => (0..n).collect(),
                    SweepOrder::Greedy => greedy_order(&w0, &h, j),
                },
                |i, j| ref_grid(&start, i, j),
            );
            let worst = max_difference(&refined, &expected);
            assert!(
                worst <= 1e-6,
                "{order:?} lambda {lambda}: max difference {worst}"
            );
            // The grids are those of the start.
            assert_eq!(refined.grids(), start.grids());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// With the grids fixed, no sweep increases `tr((W0 - Q)^T (H + lambda I) (W0 - Q))`
    /// (f64 objective written in the test), from RTN or OPTQ starts, in both orders.
    #[test]
    fn a_sweep_never_increases_its_objective(
        seed in any::<u64>(),
        bits in prop::sample::select(vec![2u32, 3, 4]),
        group in prop::sample::select(vec![None, Some(16)]),
        greedy in any::<bool>(),
        damped in any::<bool>(),
        from_optq in any::<bool>(),
    ) {
        let (n, m) = (48, 4);
        let w0 = random_weights(n, m, seed);
        let h = correlated_hessian(n, 120, seed ^ 0x5eed);
        let spec = GridSpec::new(bits, group, false, 1.0).unwrap();
        let p = LayerProblem::new(w0.as_ref(), h.as_ref());
        let mut q = if from_optq {
            Optq { par: Par::Seq, ..Optq::new(spec) }.quantize(&p).unwrap()
        } else {
            Rtn { spec, par: Par::Seq }.quantize(&p).unwrap()
        };
        let lambda = if damped { reference_lambda(h.as_ref()) } else { 0.0 };
        let order = if greedy { SweepOrder::Greedy } else { SweepOrder::Natural };
        let mut previous = reference::objective(&w0, &reference::dequantized(&q), &h, lambda);
        for _ in 0..3 {
            refine(&mut q, &p, Some(lambda), order, 1, Par::Seq).unwrap();
            let now = reference::objective(&w0, &reference::dequantized(&q), &h, lambda);
            prop_assert!(now <= previous * (1.0 + 1e-6) + 1e-12, "{} > {}", now, previous);
            previous = now;
        }
        // The reported layer loss is lambda = 0's objective.
        let loss = reference::objective(&w0, &reference::dequantized(&q), &h, 0.0);
        prop_assert!((q.layer_loss() - loss).abs() <= 1e-4 * loss.max(1e-9));
    }
}

/// The target is the original weights: refining MagR-like shrunk weights with
/// `lambda = 0` lowers the loss against `W0`, which rounding the shrunk weights ignores.
#[test]
fn coordinate_descent_targets_the_original_weights() {
    let w0 = random_weights(64, 6, 1);
    let shrunk = Mat::<f32>::from_fn(64, 6, |i, j| 0.8 * w0[(i, j)]);
    let h = correlated_hessian(64, 256, 2);
    let spec = GridSpec::reference(4, None).unwrap();
    let p = LayerProblem::new(shrunk.as_ref(), h.as_ref()).with_original(w0.as_ref());
    let start = Optq::new(spec).quantize(&p).unwrap();
    let refined = CoordinateDescent {
        optq: Optq::new(spec),
        sweeps: 5,
        lambda: Some(0.0),
        order: SweepOrder::Natural,
    }
    .quantize(&p)
    .unwrap();
    assert!(
        refined.layer_loss() < start.layer_loss(),
        "{} vs {}",
        refined.layer_loss(),
        start.layer_loss()
    );
}

#[test]
fn reference_lambda_is_three_quarters_of_the_mean_diagonal() {
    let h = Mat::<f32>::from_fn(4, 4, |i, k| if i == k { (i + 1) as f32 } else { 0.5 });
    assert_eq!(reference_lambda(h.as_ref()), 0.75 * 2.5);
}
