//! OPTQ against RTN and against the naive f64 reference.

use faer::{Mat, Par};
use quantizers::{GridSpec, Optq, Quantizer, Rtn};

use crate::reference::{self, RefOptq, RefSpec};
use crate::{
    assert_on_grid, correlated_hessian, diagonal_hessian, kill_input, max_difference, problem,
    random_weights,
};

/// With a diagonal `H` no error is carried to other inputs, so OPTQ is RTN (natural
/// order; per channel also under act-order, where groups would follow another order).
#[test]
fn optq_equals_rtn_for_a_diagonal_hessian() {
    let (n, m) = (48, 7);
    let h = diagonal_hessian(n);
    let w = random_weights(n, m, 5);
    for bits in [2, 3, 4, 8] {
        for group in [None, Some(8), Some(16)] {
            for act_order in [false, true] {
                if act_order && group.is_some() {
                    continue;
                }
                let spec = GridSpec::new(bits, group, false, 1.0).unwrap();
                let rtn = Rtn {
                    spec,
                    par: Par::Seq,
                }
                .quantize(&problem(&w, &h))
                .unwrap();
                let optq = Optq {
                    act_order,
                    block_size: 16,
                    ..Optq::new(spec)
                }
                .quantize(&problem(&w, &h))
                .unwrap();
                assert_on_grid(&optq);
                assert_eq!(
                    optq, rtn,
                    "bits {bits} group {group:?} act_order {act_order}"
                );
            }
        }
    }
}

/// OPTQ equals the naive f64 reference (explicit inverse-Hessian downdates) to 1e-4 in
/// every configuration: bits, per channel or groups (20 does not divide the 48 inputs:
/// the last group has 8), act-order, static groups, block sizes that do and do not
/// divide the inputs, a dead input.
#[test]
fn optq_equals_the_f64_reference() {
    let (n, m) = (48, 6);
    let mut case = 0u64;
    for bits in [2, 3, 4, 8] {
        for group in [None, Some(8), Some(16), Some(20)] {
            for (act_order, static_groups) in [(false, false), (true, false), (true, true)] {
                for block in [5, 16, 128] {
                    case += 1;
                    let w = random_weights(n, m, 100 + case);
                    let mut h = correlated_hessian(n, 200, 200 + case);
                    if case.is_multiple_of(3) {
                        kill_input(&mut h, (case as usize * 7) % n);
                    }
                    let spec = GridSpec::new(bits, group, false, 0.95).unwrap();
                    let q = Optq {
                        spec,
                        block_size: block,
                        damping: 0.01,
                        act_order,
                        static_groups,
                        par: Par::Seq,
                    }
                    .quantize(&problem(&w, &h))
                    .unwrap();
                    assert_on_grid(&q);
                    let (expected, g_idx) = reference::optq(
                        &w,
                        &h,
                        RefOptq {
                            spec: RefSpec {
                                bits,
                                symmetric: false,
                                beta: 0.95,
                            },
                            group_size: group,
                            act_order,
                            static_groups,
                            damping: 0.01,
                            block,
                        },
                    );
                    let what = format!(
                        "bits {bits} group {group:?} act_order {act_order} static {static_groups} block {block}"
                    );
                    let worst = max_difference(&q, &expected);
                    assert!(worst <= 1e-4, "{what}: max difference {worst}");
                    let g_idx: Vec<u32> = g_idx.iter().map(|&g| g as u32).collect();
                    assert_eq!(q.g_idx(), &g_idx[..], "{what}");
                }
            }
        }
    }
}

/// On correlated inputs OPTQ's layer loss is below RTN's.
#[test]
fn optq_beats_rtn_on_correlated_inputs() {
    for seed in 0..5 {
        let w = random_weights(64, 16, seed);
        let h = correlated_hessian(64, 256, seed + 50);
        for spec in [
            GridSpec::reference(3, None).unwrap(),
            GridSpec::reference(4, None).unwrap(),
            GridSpec::new(2, Some(16), false, 1.0).unwrap(),
        ] {
            let rtn = Rtn {
                spec,
                par: Par::Seq,
            }
            .quantize(&problem(&w, &h))
            .unwrap();
            for act_order in [false, true] {
                let optq = Optq {
                    act_order,
                    ..Optq::new(spec)
                }
                .quantize(&problem(&w, &h))
                .unwrap();
                assert!(
                    optq.layer_loss() < rtn.layer_loss(),
                    "seed {seed} {spec:?} act_order {act_order}: {} vs {}",
                    optq.layer_loss(),
                    rtn.layer_loss()
                );
            }
        }
    }
}

/// Act-order processes inputs by decreasing `H_ii`, but codes, weights and `g_idx` come
/// back in the original input order.
#[test]
fn act_order_keeps_the_original_input_order() {
    // Diagonal H increasing with the input: act-order processes the inputs backwards,
    // and the result is still RTN in the original order.
    let n = 32;
    let h = Mat::<f32>::from_fn(n, n, |i, k| if i == k { (i + 1) as f32 } else { 0.0 });
    let w = random_weights(n, 5, 9);
    let spec = GridSpec::reference(4, None).unwrap();
    let rtn = Rtn {
        spec,
        par: Par::Seq,
    }
    .quantize(&problem(&w, &h))
    .unwrap();
    let optq = Optq {
        act_order: true,
        ..Optq::new(spec)
    }
    .quantize(&problem(&w, &h))
    .unwrap();
    assert_eq!(optq, rtn);
    // Dynamic groups follow the processing order: the last input (largest H_ii) is in
    // group 0, the first in the last group, and each group is fitted to its own inputs.
    let grouped = GridSpec::new(4, Some(8), false, 1.0).unwrap();
    let q = Optq {
        act_order: true,
        ..Optq::new(grouped)
    }
    .quantize(&problem(&w, &h))
    .unwrap();
    let expected: Vec<u32> = (0..n).map(|i| ((n - 1 - i) / 8) as u32).collect();
    assert_eq!(q.g_idx(), &expected[..]);
    assert_on_grid(&q);
    for i in 0..n {
        for j in 0..5 {
            assert!(
                (q.dequantized()[(i, j)] - w[(i, j)]).abs() <= 0.5 * q.grid(i, j).scale * 1.0001
            );
        }
    }
}

/// Inputs with `H_ii = 0` are quantized as zero weights.
#[test]
fn dead_inputs_are_zeroed() {
    let w = random_weights(16, 3, 4);
    let mut h = correlated_hessian(16, 64, 5);
    kill_input(&mut h, 5);
    for group in [None, Some(8)] {
        let spec = GridSpec::new(4, group, false, 1.0).unwrap();
        let q = Optq::new(spec).quantize(&problem(&w, &h)).unwrap();
        for j in 0..3 {
            assert_eq!(q.dequantized()[(5, j)], q.grid(5, j).round(0.0));
        }
    }
}

/// Sequential and parallel runs agree bit for bit.
#[test]
fn parallelism_does_not_change_the_result() {
    let w = random_weights(256, 40, 11);
    let h = correlated_hessian(256, 512, 12);
    let spec = GridSpec::reference(3, Some(64)).unwrap();
    let seq = Optq {
        par: Par::Seq,
        ..Optq::new(spec)
    }
    .quantize(&problem(&w, &h))
    .unwrap();
    let par = Optq {
        par: Par::rayon(2),
        ..Optq::new(spec)
    }
    .quantize(&problem(&w, &h))
    .unwrap();
    assert_eq!(seq.codes(), par.codes());
}
