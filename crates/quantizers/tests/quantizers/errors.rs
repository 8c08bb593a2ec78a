//! Bad input gives an error naming what is wrong.

use faer::{Mat, Par};
use quantizers::{
    CoordinateDescent, GridSpec, LayerProblem, Optq, QuantError, Quantizer, Rtn, SweepOrder,
    layer_loss, refine,
};

use crate::{diagonal_hessian, problem, random_weights};

#[test]
fn bad_grid_settings() {
    for bits in [0, 1, 5, 7, 16] {
        let err = GridSpec::new(bits, None, false, 1.0).unwrap_err();
        assert_eq!(err, QuantError::Bits(bits));
        assert!(err.to_string().contains(&bits.to_string()));
    }
    assert!(matches!(
        GridSpec::new(4, Some(0), false, 1.0),
        Err(QuantError::Parameter(_))
    ));
    for beta in [0.0, -0.5, 1.5, f32::NAN] {
        assert!(
            matches!(
                GridSpec::new(4, None, false, beta),
                Err(QuantError::Parameter(_))
            ),
            "{beta}"
        );
    }
}

/// A group size that does not divide the inputs is not an error: the last group is
/// shorter (30 inputs in groups of 8: three of 8 and one of 6), as in the GPTQ reference.
#[test]
fn a_group_size_that_does_not_divide_the_inputs_leaves_a_short_last_group() {
    let w = random_weights(30, 4, 1);
    let h = diagonal_hessian(30);
    let spec = GridSpec::new(4, Some(8), false, 1.0).unwrap();
    for q in [
        Rtn {
            spec,
            par: Par::Seq,
        }
        .quantize(&problem(&w, &h))
        .unwrap(),
        Optq::new(spec).quantize(&problem(&w, &h)).unwrap(),
    ] {
        assert_eq!(q.groups(), 4);
        assert_eq!(q.g_idx()[29], 3);
        assert_eq!(q.g_idx()[24], 3);
        assert_eq!(q.g_idx()[23], 2);
    }
}

#[test]
fn shapes_must_agree() {
    let w = random_weights(30, 4, 1);
    let spec = GridSpec::reference(4, None).unwrap();
    let h_bad = diagonal_hessian(29);
    let err = Optq::new(spec).quantize(&problem(&w, &h_bad)).unwrap_err();
    assert_eq!(
        err,
        QuantError::Shape {
            what: "H",
            expected_rows: 30,
            expected_cols: 30,
            actual_rows: 29,
            actual_cols: 29
        }
    );
    assert!(err.to_string().contains("29 x 29"));
    let h = diagonal_hessian(30);
    let other = random_weights(30, 5, 2);
    let p = LayerProblem::new(w.as_ref(), h.as_ref()).with_original(other.as_ref());
    assert!(matches!(
        Rtn::new(spec).quantize(&p),
        Err(QuantError::Shape {
            what: "original weights",
            ..
        })
    ));
    let empty = Mat::<f32>::zeros(0, 4);
    let h0 = Mat::<f32>::zeros(0, 0);
    assert!(matches!(
        Rtn::new(spec).quantize(&problem(&empty, &h0)),
        Err(QuantError::Parameter(_))
    ));
    assert!(matches!(
        layer_loss(w.as_ref(), other.as_ref(), h.as_ref(), Par::Seq),
        Err(QuantError::Shape { what: "Q", .. })
    ));
    // refine on a problem of another shape than the result.
    let mut q = Rtn::new(spec).quantize(&problem(&w, &h)).unwrap();
    let p_other = problem(&other, &h);
    assert!(matches!(
        refine(&mut q, &p_other, None, SweepOrder::Natural, 1, Par::Seq),
        Err(QuantError::Shape {
            what: "weights",
            ..
        })
    ));
}

#[test]
fn non_finite_entries_are_named() {
    let w = random_weights(16, 4, 1);
    let h = diagonal_hessian(16);
    let spec = GridSpec::reference(4, None).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w_bad = w.clone();
        w_bad[(2, 3)] = bad;
        let err = Rtn::new(spec).quantize(&problem(&w_bad, &h)).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::NonFinite {
                    what: "weights",
                    row: 2,
                    col: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut h_bad = h.clone();
        h_bad[(1, 0)] = bad;
        let err = Optq::new(spec).quantize(&problem(&w, &h_bad)).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::NonFinite {
                    what: "H",
                    row: 1,
                    col: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("row 1, column 0"));
    }
}

#[test]
fn bad_optq_and_cd_parameters() {
    let w = random_weights(16, 4, 1);
    let h = diagonal_hessian(16);
    let spec = GridSpec::reference(4, None).unwrap();
    let p = problem(&w, &h);
    for optq in [
        Optq {
            block_size: 0,
            ..Optq::new(spec)
        },
        Optq {
            damping: -0.1,
            ..Optq::new(spec)
        },
        Optq {
            damping: f64::NAN,
            ..Optq::new(spec)
        },
    ] {
        assert!(
            matches!(optq.quantize(&p), Err(QuantError::Parameter(_))),
            "{optq:?}"
        );
    }
    for lambda in [-1.0, f64::INFINITY] {
        let cd = CoordinateDescent {
            optq: Optq::new(spec),
            sweeps: 1,
            lambda: Some(lambda),
            order: SweepOrder::Natural,
        };
        assert!(
            matches!(cd.quantize(&p), Err(QuantError::Parameter(_))),
            "{lambda}"
        );
    }
}

/// A Hessian that damping does not make positive definite names the input where the
/// factorisation failed.
#[test]
fn indefinite_hessian() {
    let n = 12;
    let w = random_weights(n, 3, 1);
    let h = Mat::<f32>::from_fn(n, n, |i, k| match (i == k, i) {
        (true, 4) => -3.0,
        (true, _) => 1.0,
        _ => 0.0,
    });
    let spec = GridSpec::reference(4, None).unwrap();
    let err = Optq {
        damping: 0.0,
        ..Optq::new(spec)
    }
    .quantize(&problem(&w, &h))
    .unwrap_err();
    assert_eq!(err, QuantError::NotPositiveDefinite { input: 4 });
    assert!(err.to_string().contains("input 4"));
}
