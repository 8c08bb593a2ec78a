//! GGUF K-quants (Q2_K ... Q6_K): every layer packed by `pack_ggml` decodes, by a naive
//! transcription of llama.cpp's `dequantize_row_q*_K` written here from
//! `ggml/src/ggml-quants.c` (the C loops, pointer walks and all), to exactly the
//! quantizer's dequantized weights; the fits, the quantizers and the errors.

use faer::{Mat, Par};
use half::f16;
use proptest::prelude::*;
use quantizers::{
    CoordinateDescent, GgmlBlockType, GridFit, GridSpec, Optq, QuantError, QuantizedLinear,
    Quantizer, Rtn, SweepOrder, ZeroFormat, dequantize_ggml, pack_ggml, pack_gptq,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use crate::{correlated_hessian, diagonal_hessian, kill_input, problem, random_weights};

use GgmlBlockType::{Q2_K, Q3_K, Q4_K, Q5_K, Q6_K};

const QK_K: usize = 256;

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `get_scale_min_k4`, transcribed.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `dequantize_row_q*_K` for one super-block, transcribed loop for loop.
fn ref_dequantize_super_block(ty: GgmlBlockType, x: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(QK_K);
    match ty {
        Q2_K => {
            let (scales, qs, d, min) = (&x[0..16], &x[16..80], half(x, 80), half(x, 82));
            let mut is = 0;
            let mut q = 0;
            for _n in (0..QK_K).step_by(128) {
                let mut shift = 0;
                for _j in 0..4 {
                    for off in [0, 16] {
                        let sc = scales[is];
                        is += 1;
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for l in 0..16 {
                            y.push(dl * ((qs[q + l + off] >> shift) & 3) as i8 as f32 - ml);
                        }
                    }
                    shift += 2;
                }
                q += 32;
            }
        }
        Q3_K => {
            let (hm, qs, raw, d_all) = (&x[0..32], &x[32..96], &x[96..108], half(x, 108));
            // The kmask unpacking of the 12 scale bytes into 16 int8 scales.
            let mut aux = [0u32; 4];
            for (k, a) in aux.iter_mut().take(3).enumerate() {
                *a = u32::from_le_bytes([
                    raw[4 * k],
                    raw[4 * k + 1],
                    raw[4 * k + 2],
                    raw[4 * k + 3],
                ]);
            }
            let (kmask1, kmask2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let tmp = aux[2];
            aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
            aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
            aux[0] = (aux[0] & kmask2) | ((tmp & kmask1) << 4);
            aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
            let scales: Vec<i8> = aux
                .iter()
                .flat_map(|a| a.to_le_bytes())
                .map(|b| b as i8)
                .collect();
            let (mut is, mut q, mut m) = (0, 0, 1u8);
            for _n in (0..QK_K).step_by(128) {
                let mut shift = 0;
                for _j in 0..4 {
                    for off in [0, 16] {
                        let dl = d_all * (scales[is] as i32 - 32) as f32;
                        is += 1;
                        for l in 0..16 {
                            let low = ((qs[q + l + off] >> shift) & 3) as i8;
                            let high = if hm[l + off] & m != 0 { 0 } else { 4 };
                            y.push(dl * (low - high) as f32);
                        }
                    }
                    shift += 2;
                    m <<= 1;
                }
                q += 32;
            }
        }
        Q4_K | Q5_K => {
            let (d, min, scales) = (half(x, 0), half(x, 2), &x[4..16]);
            let (qh, ql) = if ty == Q5_K {
                (&x[16..48], &x[48..176])
            } else {
                (&x[0..0], &x[16..144])
            };
            let (mut is, mut q, mut u1, mut u2) = (0, 0, 1u8, 2u8);
            for _j in (0..QK_K).step_by(64) {
                let (sc, m) = get_scale_min_k4(is, scales);
                let (d1, m1) = (d * sc as f32, min * m as f32);
                let (sc, m) = get_scale_min_k4(is + 1, scales);
                let (d2, m2) = (d * sc as f32, min * m as f32);
                let high = |l: usize, u: u8| {
                    if ty == Q5_K && qh[l] & u != 0 { 16 } else { 0 }
                };
                for l in 0..32 {
                    y.push(d1 * ((ql[q + l] & 0xF) + high(l, u1)) as f32 - m1);
                }
                for l in 0..32 {
                    y.push(d2 * ((ql[q + l] >> 4) + high(l, u2)) as f32 - m2);
                }
                q += 32;
                is += 2;
                u1 <<= 2;
                u2 <<= 2;
            }
        }
        Q6_K => {
            let (ql, qh, sc, d) = (&x[0..128], &x[128..192], &x[192..208], half(x, 208));
            let mut out = [0.0f32; QK_K];
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    let s = |k: usize| sc[is + k] as i8 as f32;
                    out[128 * n + l] = d * s(0) * q1 as f32;
                    out[128 * n + l + 32] = d * s(2) * q2 as f32;
                    out[128 * n + l + 64] = d * s(4) * q3 as f32;
                    out[128 * n + l + 96] = d * s(6) * q4 as f32;
                }
            }
            y.extend_from_slice(&out);
        }
        _ => unreachable!("{ty} is not a K-quant"),
    }
    y
}

/// The naive dequantization of a whole tensor into `W`'s layout (in x out).
fn ref_dequantize(bytes: &[u8], ty: GgmlBlockType, rows: usize, cols: usize) -> Mat<f32> {
    let per_row = cols / QK_K;
    let mut w = Mat::zeros(cols, rows);
    for (index, block) in bytes.chunks_exact(ty.bytes_per_block()).enumerate() {
        let (row, b) = (index / per_row, index % per_row);
        for (k, v) in ref_dequantize_super_block(ty, block)
            .into_iter()
            .enumerate()
        {
            w[(b * QK_K + k, row)] = v;
        }
    }
    w
}

fn same_bits(a: &Mat<f32>, b: faer::MatRef<'_, f32>) -> Result<(), String> {
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            if a[(i, j)].to_bits() != b[(i, j)].to_bits() {
                return Err(format!("({i}, {j}): {} vs {}", a[(i, j)], b[(i, j)]));
            }
        }
    }
    Ok(())
}

/// Weights with the shapes that stress a fit: Gaussian, heavy outliers, all positive,
/// constant or zero sub-blocks, tiny magnitudes (f16 subnormal scales), huge ones.
fn layer_values(n: usize, m: usize, seed: u64, kind: u8) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.05).unwrap();
    Mat::from_fn(n, m, |i, _| {
        let g = normal.sample(&mut rng);
        match kind {
            0 => g,
            1 => {
                if rng.random_range(0..50) == 0 {
                    g * 40.0
                } else {
                    g
                }
            }
            2 => g.abs() + 0.01,
            3 => {
                if (i / 16) % 3 == 0 {
                    0.02
                } else {
                    g
                }
            }
            4 => {
                if (i / 32) % 2 == 0 {
                    0.0
                } else {
                    g
                }
            }
            5 => g * 1e-5,
            _ => g * 3.0e3,
        }
    })
}

fn select_k() -> impl Strategy<Value = GgmlBlockType> {
    prop::sample::select(GgmlBlockType::K_QUANTS.to_vec())
}

fn select_fit() -> impl Strategy<Value = GridFit> {
    prop::sample::select(vec![GridFit::MinMax, GridFit::Weighted])
}

fn rtn(ty: GgmlBlockType, fit: GridFit) -> Rtn {
    Rtn {
        spec: GridSpec::ggml(ty, fit),
        par: Par::Seq,
    }
}

/// `sum_j sum_i H_ii (W - Q)_ij^2`, the diagonal part of the layer loss.
fn diagonal_loss(w: &Mat<f32>, q: &QuantizedLinear, h: &Mat<f32>) -> f64 {
    let mut total = 0.0;
    for j in 0..w.ncols() {
        for i in 0..w.nrows() {
            let d = w[(i, j)] as f64 - q.dequantized()[(i, j)] as f64;
            total += h[(i, i)] as f64 * d * d;
        }
    }
    total
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// RTN, either fit: the packed bytes have the C struct's size, decode by the naive
    /// `dequantize_row_q*_K` and by `dequantize_ggml` to the dequantized weights bit for
    /// bit, and every code is on its sub-block's grid.
    #[test]
    fn packed_rtn_decodes_exactly(
        seed in any::<u64>(),
        kind in 0u8..7,
        ty in select_k(),
        fit in select_fit(),
    ) {
        let (n, m) = (512, 3);
        let w = layer_values(n, m, seed, kind);
        let h = diagonal_hessian(n);
        let q = rtn(ty, fit).quantize(&problem(&w, &h)).unwrap();
        let bytes = pack_ggml(&q, ty).unwrap();
        prop_assert_eq!(bytes.len(), m * 2 * ty.bytes_per_block());
        let naive = ref_dequantize(&bytes, ty, m, n);
        prop_assert_eq!(same_bits(&naive, q.dequantized()), Ok(()));
        let ours = dequantize_ggml(&bytes, ty, m, n).unwrap();
        prop_assert_eq!(same_bits(&ours, q.dequantized()), Ok(()));
        for j in 0..m {
            for i in 0..n {
                prop_assert!(q.code(i, j) <= ty.maxq());
                prop_assert_eq!(q.g_idx()[i] as usize, i / ty.group_size());
            }
        }
    }

    /// Any bytes with finite f16 scales: `dequantize_ggml` reads them as the naive C
    /// transcription does.
    #[test]
    fn reader_matches_the_c_loops(seed in any::<u64>(), ty in select_k()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bytes: Vec<u8> = (0..2 * ty.bytes_per_block()).map(|_| rng.random()).collect();
        let halves: &[usize] = match ty {
            Q2_K => &[80, 82],
            Q3_K => &[108],
            Q4_K | Q5_K => &[0, 2],
            _ => &[208],
        };
        for block in bytes.chunks_exact_mut(ty.bytes_per_block()) {
            for &at in halves {
                let v = f16::from_f32(rng.random_range(-2.0f32..2.0));
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        let naive = ref_dequantize(&bytes, ty, 1, 2 * QK_K);
        let ours = dequantize_ggml(&bytes, ty, 1, 2 * QK_K).unwrap();
        prop_assert_eq!(same_bits(&naive, ours.as_ref()), Ok(()));
    }

    /// The weighted fit never does worse than min-max on the weighted error it
    /// minimises (with a diagonal `H`, the layer loss).
    #[test]
    fn weighted_fit_is_never_worse(seed in any::<u64>(), kind in 0u8..7, ty in select_k()) {
        let n = 256;
        let w = layer_values(n, 2, seed, kind);
        let mut rng = StdRng::seed_from_u64(seed ^ 7);
        let h = Mat::from_fn(n, n, |i, k| if i == k { rng.random_range(0.0f32..4.0) } else { 0.0 });
        let mm = rtn(ty, GridFit::MinMax).quantize(&problem(&w, &h)).unwrap();
        let wt = rtn(ty, GridFit::Weighted).quantize(&problem(&w, &h)).unwrap();
        let (a, b) = (diagonal_loss(&w, &wt, &h), diagonal_loss(&w, &mm, &h));
        prop_assert!(a <= b * (1.0 + 1e-9) + 1e-30, "weighted {} vs min-max {}", a, b);
    }
}

/// More bits, less error: on Gaussian weights the relative RMS error of RTN falls from
/// Q2_K to Q6_K, each within a band that a working fit reaches (a uniform b-bit grid on
/// 16-32 Gaussian values: about 2^-b of the range).
#[test]
fn error_falls_with_bits() {
    let (n, m) = (1024, 16);
    let w = random_weights(n, m, 11);
    let h = diagonal_hessian(n);
    let rms = |ty| {
        let q = rtn(ty, GridFit::Weighted)
            .quantize(&problem(&w, &h))
            .unwrap();
        let (mut e, mut s) = (0.0f64, 0.0f64);
        for j in 0..m {
            for i in 0..n {
                let x = w[(i, j)] as f64;
                e += (x - q.dequantized()[(i, j)] as f64).powi(2);
                s += x * x;
            }
        }
        (e / s).sqrt()
    };
    let errors: Vec<f64> = GgmlBlockType::K_QUANTS.iter().map(|&ty| rms(ty)).collect();
    for pair in errors.windows(2) {
        assert!(pair[1] < pair[0] * 0.7, "{errors:?}");
    }
    // Q2_K: a 4-level grid with a minimum; Q6_K: 64 levels.
    assert!(errors[0] < 0.5 && errors[0] > 0.15, "{errors:?}");
    assert!(errors[4] < 0.03, "{errors:?}");
}

/// OPTQ and OPTQ + CD on K-quant grids: the super-block fitted when the loop reaches it,
/// packed bytes decode exactly, a dead input is zero (without minimums), OPTQ beats RTN
/// on a correlated `H`.
#[test]
fn optq_on_k_quants() {
    let n = 512;
    for ty in GgmlBlockType::K_QUANTS {
        for fit in [GridFit::MinMax, GridFit::Weighted] {
            let spec = GridSpec::ggml(ty, fit);
            let wins = (0..4u64)
                .filter(|&seed| {
                    let w = random_weights(n, 8, seed);
                    let mut h = correlated_hessian(n, 1024, seed + 100);
                    kill_input(&mut h, 300);
                    let optq = Optq::new(spec).quantize(&problem(&w, &h)).unwrap();
                    let bytes = pack_ggml(&optq, ty).unwrap();
                    same_bits(&ref_dequantize(&bytes, ty, 8, n), optq.dequantized()).unwrap();
                    // A dead input's weight is zeroed, which a grid without a minimum holds.
                    for j in (0..8).filter(|_| !ty.has_min()) {
                        assert_eq!(optq.dequantized()[(300, j)].abs(), 0.0, "{ty} dead input");
                    }
                    let rtn = rtn(ty, fit).quantize(&problem(&w, &h)).unwrap();
                    optq.layer_loss() < rtn.layer_loss()
                })
                .count();
            assert!(
                wins >= 3,
                "{ty} {fit:?}: OPTQ beat RTN for {wins} of 4 seeds"
            );
            // Static groups with act-order keep the natural super-blocks.
            let w = random_weights(n, 4, 9);
            let h = correlated_hessian(n, 1024, 10);
            let q = Optq {
                act_order: true,
                static_groups: true,
                ..Optq::new(spec)
            }
            .quantize(&problem(&w, &h))
            .unwrap();
            let bytes = pack_ggml(&q, ty).unwrap();
            same_bits(&ref_dequantize(&bytes, ty, 4, n), q.dequantized()).unwrap();
            let cd = CoordinateDescent {
                optq: Optq::new(spec),
                sweeps: 2,
                lambda: Some(0.0),
                order: SweepOrder::Natural,
            }
            .quantize(&problem(&w, &h))
            .unwrap();
            let bytes = pack_ggml(&cd, ty).unwrap();
            same_bits(&ref_dequantize(&bytes, ty, 4, n), cd.dequantized()).unwrap();
        }
    }
}

#[test]
fn k_quant_types_and_errors() {
    let ids: Vec<u32> = GgmlBlockType::K_QUANTS
        .iter()
        .map(|t| t.type_id())
        .collect();
    assert_eq!(ids, [10, 11, 12, 13, 14]);
    // sizeof(block_q*_K) from ggml-common.h's static asserts.
    let sizes: Vec<usize> = GgmlBlockType::K_QUANTS
        .iter()
        .map(|t| t.bytes_per_block())
        .collect();
    assert_eq!(
        sizes,
        [
            2 * 2 + 16 + 64,
            2 + 64 + 32 + 12,
            2 * 2 + 12 + 128,
            2 * 2 + 12 + 128 + 32,
            2 + 16 + 192
        ]
    );
    for ty in GgmlBlockType::K_QUANTS {
        assert_eq!(ty.block_size(), 256);
        assert_eq!(
            ty.name().to_lowercase().parse::<GgmlBlockType>().unwrap(),
            ty
        );
        assert_eq!(
            ty.name().to_uppercase().parse::<GgmlBlockType>().unwrap(),
            ty
        );
        let spec = GridSpec::ggml(ty, GridFit::Weighted);
        assert_eq!(spec.group_size(), Some(ty.group_size()));
        assert_eq!(spec.fit_span(512).unwrap(), 256);
        // 576 inputs (SmolLM2's width) are not whole super-blocks.
        let w = random_weights(576, 2, 1);
        let h = diagonal_hessian(576);
        let err = Rtn::new(spec).quantize(&problem(&w, &h)).unwrap_err();
        assert_eq!(
            err,
            QuantError::GgmlWidth {
                inputs: 576,
                ty,
                block: 256
            }
        );
        assert!(
            err.to_string().contains("576") && err.to_string().contains("256"),
            "{err}"
        );
        assert_eq!(Optq::new(spec).quantize(&problem(&w, &h)).unwrap_err(), err);
        // Act-order with dynamic groups cannot be stored.
        let w = random_weights(256, 2, 1);
        let h = correlated_hessian(256, 512, 2);
        let act = Optq {
            act_order: true,
            ..Optq::new(spec)
        };
        assert_eq!(
            act.quantize(&problem(&w, &h)).unwrap_err(),
            QuantError::GgmlActOrder(ty)
        );
        // K-quant grids are not GPTQ grids, nor another K-quant's.
        let q = Rtn::new(spec).quantize(&problem(&w, &h)).unwrap();
        assert!(matches!(
            pack_gptq(&q, ZeroFormat::V2),
            Err(QuantError::Parameter(_))
        ));
        let other = if ty == Q6_K { Q5_K } else { Q6_K };
        assert!(matches!(
            pack_ggml(&q, other),
            Err(QuantError::GgmlSpec { .. })
        ));
    }
}

/// llama.cpp's imatrix path for Q4_K (`quantize_row_q4_K_impl` with `make_qkx3_quants`
/// and `make_qp_quants`), transcribed for one super-block in f32 as the C code computes;
/// `qw` is the importance (llama.cpp's imatrix, here `H_ii`). Returns the dequantized
/// values.
fn llama_q4_k_imatrix(x: &[f32], qw: &[f32]) -> Vec<f32> {
    let nearest = |v: f32| v.round_ties_even() as i32;
    let sum_x2: f32 = x.iter().map(|v| v * v).sum();
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    let (mut scales, mut mins, mut sw) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let w: Vec<f32> = (0..32)
            .map(|l| qw[32 * j + l] * (sigma2 + xs[l] * xs[l]).sqrt())
            .collect();
        sw[j] = w.iter().sum();
        // make_qkx3_quants(32, 15, x, w, L, &min, Laux, -0.9, 0.05, 36, false)
        let (mut min, mut max) = (xs[0], xs[0]);
        let (mut sum_w, mut sum_x) = (w[0], w[0] * xs[0]);
        for i in 1..32 {
            min = min.min(xs[i]);
            max = max.max(xs[i]);
            sum_w += w[i];
            sum_x += w[i] * xs[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        if max <= min {
            (scales[j], mins[j]) = (0.0, -min);
            continue;
        }
        let nmax = 15.0f32;
        let mut iscale = nmax / (max - min);
        let mut scale = 1.0 / iscale;
        let err = |scale: f32, min: f32, l: &[i32]| -> f32 {
            (0..32)
                .map(|i| {
                    let d = scale * l[i] as f32 + min - xs[i];
                    w[i] * d * d
                })
                .sum()
        };
        let levels = |iscale: f32, min: f32| -> Vec<i32> {
            xs.iter()
                .map(|&v| nearest(iscale * (v - min)).clamp(0, 15))
                .collect()
        };
        let mut best = err(scale, min, &levels(iscale, min));
        for is in 0..=36 {
            iscale = (-0.9 + 0.05 * is as f32 + nmax) / (max - min);
            let l = levels(iscale, min);
            let (mut sl, mut sl2, mut sxl) = (0.0f32, 0.0f32, 0.0f32);
            for i in 0..32 {
                sl += w[i] * l[i] as f32;
                sl2 += w[i] * (l[i] * l[i]) as f32;
                sxl += w[i] * l[i] as f32 * xs[i];
            }
            let det = sum_w * sl2 - sl * sl;
            if det > 0.0 {
                let mut this_scale = (sum_w * sxl - sum_x * sl) / det;
                let mut this_min = (sl2 * sum_x - sl * sxl) / det;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sxl / sl2;
                }
                let e = err(this_scale, this_min, &l);
                if e < best {
                    (best, scale, min) = (e, this_scale, this_min);
                }
            }
        }
        (scales[j], mins[j]) = (scale, -min);
    }
    // make_qp_quants(8, 63, v, L, sw)
    let qp = |v: &[f32; 8]| -> (f32, [i32; 8]) {
        let max = v.iter().fold(0.0f32, |a, &b| a.max(b));
        if max < 1e-15 {
            return (0.0, [0; 8]);
        }
        let mse = |iscale: f32| -> f32 {
            (0..8)
                .map(|i| {
                    let l = nearest(iscale * v[i]).min(63);
                    let d = v[i] - l as f32 / iscale;
                    sw[i] * d * d
                })
                .sum()
        };
        let mut iscale = 63.0 / max;
        let mut best = {
            let s = 1.0 / iscale;
            (0..8)
                .map(|i| {
                    let d = v[i] - s * nearest(iscale * v[i]) as f32;
                    sw[i] * d * d
                })
                .sum::<f32>()
        };
        for is in [-4, -3, -2, -1, 1, 2, 3, 4] {
            let iscale_is = (0.1 * is as f32 + 63.0) / max;
            let e = mse(iscale_is);
            if e < best {
                (best, iscale) = (e, iscale_is);
            }
        }
        let mut l = [0i32; 8];
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..8 {
            l[i] = nearest(iscale * v[i]).min(63);
            sumlx += sw[i] * v[i] * l[i] as f32;
            suml2 += sw[i] * (l[i] * l[i]) as f32;
        }
        for _ in 0..5 {
            let mut changed = 0;
            for i in 0..8 {
                let slx = sumlx - sw[i] * v[i] * l[i] as f32;
                let sl2 = suml2 - sw[i] * (l[i] * l[i]) as f32;
                if slx > 0.0 && sl2 > 0.0 {
                    let new_l = nearest(v[i] * sl2 / slx).min(63);
                    if new_l != l[i] {
                        let slx = slx + sw[i] * v[i] * new_l as f32;
                        let sl2 = sl2 + sw[i] * (new_l * new_l) as f32;
                        if slx * slx * suml2 > sumlx * sumlx * sl2 {
                            (l[i], sumlx, suml2) = (new_l, slx, sl2);
                            changed += 1;
                        }
                    }
                }
            }
            if changed == 0 {
                break;
            }
        }
        (if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }, l)
    };
    let (d_block, ls) = qp(&scales);
    let (m_block, lm) = qp(&mins);
    let (d, dmin) = (
        f16::from_f32(d_block).to_f32(),
        f16::from_f32(m_block).to_f32(),
    );
    let mut y = vec![0.0f32; QK_K];
    for j in 0..8 {
        let dl = d * ls[j] as f32;
        let ml = dmin * lm[j] as f32;
        for ii in 0..32 {
            let x = x[32 * j + ii];
            let l = if dl == 0.0 {
                0
            } else {
                nearest((x + ml) / dl).clamp(0, 15)
            };
            y[32 * j + ii] = dl * l as f32 - ml;
        }
    }
    y
}

/// magr's weighted Q4_K fit against llama.cpp's imatrix path on the layer loss of a
/// diagonal `H`, `sum_i H_ii (x_i - q_i)^2`, over Gaussian, heavy-tailed and positive
/// super-blocks with random `H_ii`: magr's is lower in total and in at least 3 of 4
/// blocks (measured: ratio 0.946, lower in 176 of 200). magr minimises that error;
/// llama.cpp weights by `H_ii sqrt(sigma^2 + x_i^2)` and picks the super-block scales by
/// `make_qp_quants`.
#[test]
fn weighted_q4_k_fit_beats_llama_cpps_imatrix_path_on_its_own_error() {
    let mut rng = StdRng::seed_from_u64(21);
    let (mut ours, mut theirs) = (0.0f64, 0.0f64);
    let mut wins = 0;
    let trials = 200;
    for t in 0..trials {
        let w = layer_values(QK_K, 1, 1000 + t, (t % 3) as u8);
        let x: Vec<f32> = (0..QK_K).map(|i| w[(i, 0)]).collect();
        let hdiag: Vec<f32> = (0..QK_K).map(|_| rng.random_range(0.05f32..4.0)).collect();
        let h = Mat::from_fn(QK_K, QK_K, |i, k| if i == k { hdiag[i] } else { 0.0 });
        let q = rtn(Q4_K, GridFit::Weighted)
            .quantize(&problem(&w, &h))
            .unwrap();
        let llama = llama_q4_k_imatrix(&x, &hdiag);
        let err = |v: &dyn Fn(usize) -> f32| -> f64 {
            (0..QK_K)
                .map(|i| hdiag[i] as f64 * (x[i] as f64 - v(i) as f64).powi(2))
                .sum()
        };
        let (a, b) = (err(&|i| q.dequantized()[(i, 0)]), err(&|i| llama[i]));
        ours += a;
        theirs += b;
        wins += usize::from(a <= b);
    }
    eprintln!(
        "Q4_K, sum H_ii (x - q)^2 over {trials} super-blocks: magr {ours:.4e}, llama.cpp imatrix \
         {theirs:.4e} (ratio {:.3}); magr lower or equal in {wins}",
        ours / theirs
    );
    assert!(ours < theirs, "magr {ours} vs llama.cpp {theirs}");
    assert!(
        wins * 4 >= trials as usize * 3,
        "magr lower in {wins} of {trials}"
    );
}
