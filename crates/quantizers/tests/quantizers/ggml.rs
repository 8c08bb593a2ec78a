//! GGUF legacy block formats: the grids, the fits, and the bytes, against naive
//! references of llama.cpp's `quantize_row_*_ref` and `dequantize_row_*` written here from
//! `ggml/src/ggml-quants.c`.

use faer::{Mat, Par};
use half::f16;
use proptest::prelude::*;
use quantizers::{
    CoordinateDescent, GgmlBlockType, Grid, GridFit, GridSpec, LayerProblem, Optq, QuantError,
    QuantizedLinear, Quantizer, Rtn, SweepOrder, ZeroFormat, dequantize_ggml, pack_ggml, pack_gptq,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use crate::{correlated_hessian, diagonal_hessian, kill_input, problem, random_weights};

use GgmlBlockType::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

const QK: usize = 32;

fn h16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

fn f32_of(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// `quantize_row_*_ref` for one block, transcribed from the C source (f32 arithmetic,
/// `(int8_t)` truncation, `roundf` half away from zero, f16 by round to nearest even).
fn ref_quantize_block(ty: GgmlBlockType, x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len(), QK);
    let mut y = Vec::new();
    match ty {
        Q4_0 | Q5_0 => {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let nmax = if ty == Q4_0 { 8 } else { 16 };
            let d = max / -(nmax as f32);
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.extend_from_slice(&h16(d).to_le_bytes());
            let top = 2 * nmax - 1;
            let q = |v: f32| ((v * id + (nmax as f32 + 0.5)) as i8).min(top as i8) as u8;
            if ty == Q4_0 {
                for j in 0..16 {
                    y.push(q(x[j]) | q(x[j + 16]) << 4);
                }
            } else {
                let mut qh = 0u32;
                let mut qs = Vec::new();
                for j in 0..16 {
                    let (xi0, xi1) = (q(x[j]), q(x[j + 16]));
                    qs.push((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
                    qh |= (((xi0 & 0x10) >> 4) as u32) << j;
                    qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
                }
                y.extend_from_slice(&qh.to_le_bytes());
                y.extend_from_slice(&qs);
            }
        }
        Q4_1 | Q5_1 => {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in x {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            let nmax = if ty == Q4_1 { 15 } else { 31 };
            let d = (max - min) / nmax as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.extend_from_slice(&h16(d).to_le_bytes());
            y.extend_from_slice(&h16(min).to_le_bytes());
            let q = |v: f32| {
                // Q4_1: MIN(15, (int8_t)(x0 + 0.5f)); Q5_1: (uint8_t)(x0 + 0.5f).
                let x0 = (v - min) * id + 0.5;
                if ty == Q4_1 {
                    (x0 as i8).min(15) as u8
                } else {
                    x0 as u8
                }
            };
            if ty == Q4_1 {
                for j in 0..16 {
                    y.push(q(x[j]) | q(x[j + 16]) << 4);
                }
            } else {
                let mut qh = 0u32;
                let mut qs = Vec::new();
                for j in 0..16 {
                    let (xi0, xi1) = (q(x[j]), q(x[j + 16]));
                    qs.push((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
                    qh |= (((xi0 & 0x10) >> 4) as u32) << j;
                    qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
                }
                y.extend_from_slice(&qh.to_le_bytes());
                y.extend_from_slice(&qs);
            }
        }
        Q8_0 => {
            let amax = x
                .iter()
                .fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() });
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.extend_from_slice(&h16(d).to_le_bytes());
            for &v in x {
                y.push((v * id).round() as i8 as u8);
            }
        }
        _ => unreachable!("{ty} is a K-quant (kquant.rs)"),
    }
    assert_eq!(y.len(), ty.bytes_per_block());
    y
}

/// `dequantize_row_*` for one block, transcribed from the C source.
fn ref_dequantize_block(ty: GgmlBlockType, x: &[u8]) -> [f32; QK] {
    let d = f32_of(u16::from_le_bytes([x[0], x[1]]));
    let mut y = [0.0f32; QK];
    match ty {
        Q4_0 => {
            for j in 0..16 {
                let x0 = (x[2 + j] & 0x0F) as i32 - 8;
                let x1 = (x[2 + j] >> 4) as i32 - 8;
                y[j] = x0 as f32 * d;
                y[j + 16] = x1 as f32 * d;
            }
        }
        Q4_1 => {
            let m = f32_of(u16::from_le_bytes([x[2], x[3]]));
            for j in 0..16 {
                let x0 = (x[4 + j] & 0x0F) as i32;
                let x1 = (x[4 + j] >> 4) as i32;
                y[j] = x0 as f32 * d + m;
                y[j + 16] = x1 as f32 * d + m;
            }
        }
        Q5_0 | Q5_1 => {
            let off = if ty == Q5_1 { 4 } else { 2 };
            let m = f32_of(u16::from_le_bytes([x[2], x[3]]));
            let qh = u32::from_le_bytes(x[off..off + 4].try_into().unwrap());
            let qs = &x[off + 4..off + 20];
            for j in 0..16 {
                let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
                let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
                let x0 = ((qs[j] & 0x0F) | xh_0) as i32;
                let x1 = ((qs[j] >> 4) | xh_1) as i32;
                if ty == Q5_0 {
                    y[j] = (x0 - 16) as f32 * d;
                    y[j + 16] = (x1 - 16) as f32 * d;
                } else {
                    y[j] = x0 as f32 * d + m;
                    y[j + 16] = x1 as f32 * d + m;
                }
            }
        }
        Q8_0 => {
            for j in 0..QK {
                y[j] = x[2 + j] as i8 as f32 * d;
            }
        }
        _ => unreachable!("{ty} is a K-quant (kquant.rs)"),
    }
    y
}

/// The bytes of a whole tensor through the reference, `[cols x rows]` as `W`.
fn ref_dequantize(bytes: &[u8], ty: GgmlBlockType, rows: usize, cols: usize) -> Mat<f32> {
    let mut w = Mat::zeros(cols, rows);
    for (b, block) in bytes.chunks(ty.bytes_per_block()).enumerate() {
        let (row, col0) = (b / (cols / QK), b % (cols / QK) * QK);
        for (k, v) in ref_dequantize_block(ty, block).into_iter().enumerate() {
            w[(col0 + k, row)] = v;
        }
    }
    w
}

fn assert_bits_equal(a: faer::MatRef<'_, f32>, b: faer::MatRef<'_, f32>, what: &str) {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()), "{what}");
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            assert_eq!(
                a[(i, j)].to_bits(),
                b[(i, j)].to_bits(),
                "{what} at ({i}, {j}): {} vs {}",
                a[(i, j)],
                b[(i, j)]
            );
        }
    }
}

/// A 32-input, 1-output layer holding `x`; RTN with a diagonal `H`.
fn rtn_block(ty: GgmlBlockType, x: &[f32]) -> QuantizedLinear {
    let w = Mat::from_fn(QK, 1, |i, _| x[i]);
    let h = diagonal_hessian(QK);
    Rtn {
        spec: GridSpec::ggml(ty, GridFit::MinMax),
        par: Par::Seq,
    }
    .quantize(&problem(&w, &h))
    .unwrap()
}

#[test]
fn block_types_describe_the_c_structs() {
    for ty in GgmlBlockType::LEGACY {
        let header = 2 + if ty.has_min() { 2 } else { 0 } + if ty.bits() == 5 { 4 } else { 0 };
        assert_eq!(
            ty.bytes_per_block(),
            header + QK * ty.bits().min(4) as usize / 8 + if ty.bits() == 8 { 16 } else { 0 }
        );
        assert_eq!(ty.block_size(), 32);
        assert_eq!(ty.name().parse::<GgmlBlockType>().unwrap(), ty);
        assert_eq!(
            ty.name().to_uppercase().parse::<GgmlBlockType>().unwrap(),
            ty
        );
        assert_eq!(ty.to_string(), ty.name());
        let spec = GridSpec::ggml(ty, GridFit::Weighted);
        assert_eq!(
            (
                spec.bits(),
                spec.group_size(),
                spec.ggml_type(),
                spec.grid_fit()
            ),
            (ty.bits(), Some(32), Some(ty), GridFit::Weighted)
        );
    }
    let ids: Vec<u32> = GgmlBlockType::LEGACY.iter().map(|t| t.type_id()).collect();
    assert_eq!(ids, [2, 3, 6, 7, 8]);
    let sizes: Vec<usize> = GgmlBlockType::LEGACY
        .iter()
        .map(|t| t.bytes_per_block())
        .collect();
    assert_eq!(sizes, [18, 20, 22, 24, 34]);
    // Existing specs are untouched.
    let spec = GridSpec::reference(4, Some(32)).unwrap();
    assert_eq!((spec.ggml_type(), spec.grid_fit()), (None, GridFit::MinMax));
}

/// Known blocks, bytes worked out by hand from the C code (see each comment), through RTN
/// and `pack_ggml`, and back through both dequantizations.
#[test]
fn hand_made_blocks() {
    // All blocks: x[k] = 0 except x[0], x[1], x[16], x[17].
    let block = |a: f32, b: f32, c: f32, e: f32| {
        let mut x = [0.0f32; QK];
        (x[0], x[1], x[16], x[17]) = (a, b, c, e);
        x
    };
    let rep = |byte: u8, n: usize| vec![byte; n];
    let cases: Vec<(GgmlBlockType, [f32; QK], Vec<u8>)> = vec![
        // Q4_0: max = 1.0, d = 1.0 / -8 = -0.125 (f16 0xB000); q = x / d + 8:
        // x = 1 -> 0, -0.5 -> 12, 0.25 -> 6, -0.875 -> 15, 0 -> 8.
        // qs[0] = 0 | 6 << 4 = 0x60, qs[1] = 12 | 15 << 4 = 0xFC, others 0x88.
        (
            Q4_0,
            block(1.0, -0.5, 0.25, -0.875),
            [vec![0x00, 0xB0, 0x60, 0xFC], rep(0x88, 14)].concat(),
        ),
        // Q4_1: min = -1 (f16 0xBC00), max = 0.875, d = 1.875 / 15 = 0.125 (0x3000);
        // q = (x + 1) / 0.125: -1 -> 0, 0.875 -> 15, -0.5 -> 4, 0.25 -> 10, 0 -> 8.
        (
            Q4_1,
            block(-1.0, 0.875, -0.5, 0.25),
            [vec![0x00, 0x30, 0x00, 0xBC, 0x40, 0xAF], rep(0x88, 14)].concat(),
        ),
        // Q5_0: max = 1.0, d = -1/16 = -0.0625 (0xAC00); q = x / d + 16: 1 -> 0,
        // -0.5 -> 24, 0.25 -> 12, -0.9375 -> 31, 0 -> 16. High bits: all but q[0], q[16]:
        // qh = 0xFFFEFFFE; qs[0] = 0 | 12 << 4 = 0xC0, qs[1] = 8 | 15 << 4 = 0xF8, others 0.
        (
            Q5_0,
            block(1.0, -0.5, 0.25, -0.9375),
            [
                vec![0x00, 0xAC, 0xFE, 0xFF, 0xFE, 0xFF, 0xC0, 0xF8],
                rep(0, 14),
            ]
            .concat(),
        ),
        // Q5_1: min = -1 (0xBC00), max = 0.9375, d = 1.9375 / 31 = 0.0625 (0x2C00);
        // q = (x + 1) / 0.0625: -1 -> 0, 0.9375 -> 31, -0.5 -> 8, 0.25 -> 20, 0 -> 16.
        // qh = 0xFFFEFFFE; qs[0] = 0 | 8 << 4 = 0x80, qs[1] = 15 | 4 << 4 = 0x4F.
        (
            Q5_1,
            block(-1.0, 0.9375, -0.5, 0.25),
            [
                vec![0x00, 0x2C, 0x00, 0xBC, 0xFE, 0xFF, 0xFE, 0xFF, 0x80, 0x4F],
                rep(0, 14),
            ]
            .concat(),
        ),
        // Q8_0: amax = 127/64, d = 1/64 (0x2400); q = x * 64: 127 (0x7F), -64 (0xC0),
        // 32 (0x20) at x[16], 0.
        (Q8_0, block(127.0 / 64.0, -1.0, 0.5, 0.0), {
            let mut v = vec![0x00, 0x24, 0x7F, 0xC0];
            v.extend(rep(0, 32 - 2));
            v[2 + 16] = 0x20;
            v
        }),
    ];
    for (ty, x, expected) in cases {
        assert_eq!(ref_quantize_block(ty, &x), expected, "{ty} reference");
        let q = rtn_block(ty, &x);
        let bytes = pack_ggml(&q, ty).unwrap();
        assert_eq!(bytes, expected, "{ty}");
        let back = dequantize_ggml(&bytes, ty, 1, QK).unwrap();
        for k in 0..QK {
            // These blocks are exactly representable.
            assert_eq!(back[(k, 0)], x[k], "{ty} {k}");
        }
        assert_bits_equal(back.as_ref(), q.dequantized(), ty.name());
        assert_bits_equal(
            back.as_ref(),
            ref_dequantize(&bytes, ty, 1, QK).as_ref(),
            ty.name(),
        );
    }
}

/// `q * d` is exact in f32 for every f16 `d` and 5-bit `q`, so `q * d + m` (numpy's
/// order, and ours) equals the FMA a C compiler may contract `x0*d + m` into.
#[test]
fn fma_contraction_cannot_change_a_dequantized_value() {
    let ms = [0.0f32, -1.0, 0.1, -3.5e-3, 1234.5, -6.1e-5, 7.0e-8];
    for bits in 0..=u16::MAX {
        let d = f32_of(bits);
        if !d.is_finite() {
            continue;
        }
        for q in 0..32u32 {
            let exact = q as f64 * d as f64;
            assert_eq!((exact as f32) as f64, exact, "q {q} d {d}");
            for &m in &ms {
                let m = f32_of(h16(m));
                let plain = q as f32 * d + m;
                let fused = (q as f32).mul_add(d, m);
                assert_eq!(plain.to_bits(), fused.to_bits(), "q {q} d {d} m {m}");
            }
        }
    }
}

/// A block of 32 values with varied shapes: normal, with an outlier, one-signed,
/// constant, zeros, ties of magnitude.
fn block_values(seed: u64, kind: u8) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.05).unwrap();
    let mut x: Vec<f32> = (0..QK).map(|_| normal.sample(&mut rng)).collect();
    match kind % 7 {
        0 => {}
        1 => x[rng.random_range(0..QK)] *= 20.0,
        2 => x.iter_mut().for_each(|v| *v = v.abs() + 0.01),
        3 => x.iter_mut().for_each(|v| *v = -v.abs()),
        4 => x.iter_mut().for_each(|v| *v = 0.0375),
        5 => x.iter_mut().for_each(|v| *v = 0.0),
        _ => {
            let (a, b) = (rng.random_range(0..QK), rng.random_range(0..QK));
            x[a] = 0.3;
            x[b] = -0.3;
        }
    }
    x
}

fn weights_of(seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..QK)
        .map(|k| {
            if k % 11 == 3 {
                0.0
            } else {
                rng.random_range(0.01f32..10.0)
            }
        })
        .collect()
}

fn weighted_error(grid: &Grid, x: &[f32], w: &[f32]) -> f64 {
    x.iter()
        .zip(w)
        .map(|(&x, &w)| {
            let d = x as f64 - grid.round(x) as f64;
            w as f64 * d * d
        })
        .sum()
}

fn select_type() -> impl Strategy<Value = GgmlBlockType> {
    prop::sample::select(GgmlBlockType::LEGACY.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The min-max fit stores exactly the `d` (and `m`) bits of `quantize_row_*_ref`; the
    /// reference's bytes dequantize the same through `dequantize_ggml` and the naive
    /// `dequantize_row_*`.
    #[test]
    fn min_max_fit_is_the_c_reference(seed in any::<u64>(), kind in 0u8..7, ty in select_type()) {
        let x = block_values(seed, kind);
        let c = ref_quantize_block(ty, &x);
        let grid = GridSpec::ggml(ty, GridFit::MinMax).fit(x.iter().copied());
        let weighted = GridSpec::ggml(ty, GridFit::Weighted).fit(x.iter().copied());
        prop_assert_eq!(grid, weighted, "fit is min-max for both options");
        prop_assert_eq!(h16(grid.scale), u16::from_le_bytes([c[0], c[1]]));
        prop_assert_eq!(grid.min.is_some(), ty.has_min());
        if let Some(m) = grid.min {
            prop_assert_eq!(h16(m), u16::from_le_bytes([c[2], c[3]]));
        }
        let ours = dequantize_ggml(&c, ty, 1, QK).unwrap();
        let reference = ref_dequantize(&c, ty, 1, QK);
        assert_bits_equal(ours.as_ref(), reference.as_ref(), ty.name());
    }

    /// The weighted fit's weighted error is never above min-max's on the same block.
    #[test]
    fn weighted_fit_is_never_worse_than_min_max(seed in any::<u64>(), kind in 0u8..7, ty in select_type()) {
        let x = block_values(seed, kind);
        let w = weights_of(seed);
        let min_max = GridSpec::ggml(ty, GridFit::MinMax).fit_weighted(&x, &w);
        let weighted = GridSpec::ggml(ty, GridFit::Weighted).fit_weighted(&x, &w);
        prop_assert_eq!(min_max, GridSpec::ggml(ty, GridFit::MinMax).fit(x.iter().copied()));
        let (e_mm, e_w) = (weighted_error(&min_max, &x, &w), weighted_error(&weighted, &x, &w));
        prop_assert!(e_w <= e_mm, "{ty}: weighted {e_w} > min-max {e_mm}");
        // Still a storable block: f16 parameters, the format's zero point.
        prop_assert_eq!(f32_of(h16(weighted.scale)).to_bits(), weighted.scale.to_bits());
        prop_assert_eq!((weighted.zero, weighted.maxq), (ty.zero(), ty.maxq()));
        prop_assert_eq!(weighted.min.is_some(), ty.has_min());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// RTN, OPTQ and CD results on every format pack to bytes of the right length that
    /// dequantize, through `dequantize_ggml` and the naive `dequantize_row_*`, to exactly
    /// the layer's dequantized weights.
    #[test]
    fn quantized_layers_round_trip_through_gguf_bytes(
        seed in any::<u64>(),
        blocks in 1usize..5,
        outputs in 1usize..7,
        ty in select_type(),
        weighted in any::<bool>(),
        method in 0u8..4,
    ) {
        let n = blocks * QK;
        let mut w = random_weights(n, outputs, seed);
        if seed % 3 == 0 {
            w[(seed as usize % n, 0)] = 0.8; // an outlier
        }
        let mut h = correlated_hessian(n, 2 * n, seed ^ 1);
        if seed % 4 == 1 {
            kill_input(&mut h, seed as usize / 7 % n);
        }
        let fit = if weighted { GridFit::Weighted } else { GridFit::MinMax };
        let spec = GridSpec::ggml(ty, fit);
        let optq = Optq { par: Par::Seq, block_size: 48, ..Optq::new(spec) };
        let layer = LayerProblem::new(w.as_ref(), h.as_ref());
        let q = match method {
            0 => Rtn { spec, par: Par::Seq }.quantize(&layer),
            1 => optq.quantize(&layer),
            2 => Optq { act_order: true, static_groups: true, ..optq }.quantize(&layer),
            _ => CoordinateDescent {
                optq,
                sweeps: 2,
                lambda: Some(0.0),
                order: if seed % 2 == 0 { SweepOrder::Natural } else { SweepOrder::Greedy },
            }
            .quantize(&layer),
        }
        .unwrap();
        prop_assert_eq!(q.spec(), spec);
        let bytes = pack_ggml(&q, ty).unwrap();
        prop_assert_eq!(bytes.len(), outputs * blocks * ty.bytes_per_block());
        prop_assert_eq!(bytes.len(), ty.row_bytes(outputs, n).unwrap());
        let back = dequantize_ggml(&bytes, ty, outputs, n).unwrap();
        assert_bits_equal(back.as_ref(), q.dequantized(), "dequantize_ggml");
        assert_bits_equal(ref_dequantize(&bytes, ty, outputs, n).as_ref(), q.dequantized(), "reference");
    }
}

/// On correlated inputs OPTQ's layer loss on GGUF grids is no larger than RTN's on the
/// same grids, for at least 7 of 8 seeds, with min-max fits and with weighted `_0` fits.
///
/// Weighted Q4_1 / Q5_1 are the exception, measured and kept as a finding: on this
/// Hessian (one shared factor dominates `H`, so the loss is mostly the weighted mean of
/// each block's errors) the least-squares `(d, m)` fit makes RTN's block errors nearly
/// unbiased and RTN's loss falls about 35-fold (4 bits), below OPTQ's on the same grids
/// (about 0.3-0.4 vs 0.4-0.5; OPTQ refits each block on error-updated weights). There
/// OPTQ is asserted to beat min-max RTN (weighted OPTQ beat min-max OPTQ for 6 to 8 of
/// the 8 seeds, not asserted).
#[test]
fn optq_beats_rtn_on_gguf_grids() {
    let layer = |seed: u64| {
        (
            random_weights(64, 16, seed),
            correlated_hessian(64, 256, seed + 50),
        )
    };
    let loss = |q: &dyn Quantizer, seed: u64| {
        let (w, h) = layer(seed);
        q.quantize(&problem(&w, &h)).unwrap().layer_loss()
    };
    let rtn = |spec| Rtn {
        spec,
        par: Par::Seq,
    };
    for ty in GgmlBlockType::LEGACY {
        let (mm, wt) = (
            GridSpec::ggml(ty, GridFit::MinMax),
            GridSpec::ggml(ty, GridFit::Weighted),
        );
        let count = |f: &dyn Fn(u64) -> bool| (0..8u64).filter(|&s| f(s)).count();
        let wins = count(&|s| loss(&Optq::new(mm), s) <= loss(&rtn(mm), s));
        assert!(
            wins >= 7,
            "{ty} min-max: OPTQ beat RTN for {wins} of 8 seeds"
        );
        if ty.has_min() {
            let wins = count(&|s| loss(&Optq::new(wt), s) <= loss(&rtn(mm), s));
            assert_eq!(wins, 8, "{ty} weighted OPTQ vs min-max RTN");
        } else {
            let wins = count(&|s| loss(&Optq::new(wt), s) <= loss(&rtn(wt), s));
            assert!(
                wins >= 7,
                "{ty} weighted: OPTQ beat RTN for {wins} of 8 seeds"
            );
        }
    }
}

/// A weighted RTN fit lowers the weighted block error sum (a diagonal `H` makes that the
/// layer loss), and is bit-identical to min-max for the GPTQ-style specs.
#[test]
fn weighted_rtn_lowers_the_diagonal_loss() {
    let w = random_weights(128, 8, 3);
    let h = diagonal_hessian(128);
    for ty in GgmlBlockType::LEGACY {
        let loss = |fit| {
            Rtn {
                spec: GridSpec::ggml(ty, fit),
                par: Par::Seq,
            }
            .quantize(&problem(&w, &h))
            .unwrap()
            .layer_loss()
        };
        let (mm, wt) = (loss(GridFit::MinMax), loss(GridFit::Weighted));
        assert!(
            wt <= mm * (1.0 + 1e-6),
            "{ty}: weighted {wt} vs min-max {mm}"
        );
    }
}

#[test]
fn gguf_errors_are_named() {
    // Input width not a multiple of 32.
    let w = random_weights(48, 3, 1);
    let h = diagonal_hessian(48);
    let spec = GridSpec::ggml(Q4_0, GridFit::MinMax);
    let width = QuantError::GgmlWidth {
        inputs: 48,
        ty: Q4_0,
        block: 32,
    };
    assert_eq!(
        Rtn::new(spec).quantize(&problem(&w, &h)).unwrap_err(),
        width
    );
    assert_eq!(
        Optq::new(spec).quantize(&problem(&w, &h)).unwrap_err(),
        width
    );
    assert!(width.to_string().contains("48") && width.to_string().contains("32"));
    let width_of = |ty| QuantError::GgmlWidth {
        inputs: 48,
        ty,
        block: 32,
    };
    assert_eq!(
        dequantize_ggml(&[], Q8_0, 1, 48).unwrap_err(),
        width_of(Q8_0)
    );
    assert_eq!(Q4_1.row_bytes(2, 48).unwrap_err(), width_of(Q4_1));

    // Act-order with dynamic groups.
    let w = random_weights(64, 3, 1);
    let h = correlated_hessian(64, 128, 2);
    let err = Optq {
        act_order: true,
        ..Optq::new(spec)
    }
    .quantize(&problem(&w, &h))
    .unwrap_err();
    assert_eq!(err, QuantError::GgmlActOrder(Q4_0));
    assert!(err.to_string().contains("act-order") && err.to_string().contains("q4_0"));
    let cd = CoordinateDescent {
        optq: Optq {
            act_order: true,
            ..Optq::new(GridSpec::ggml(Q5_1, GridFit::Weighted))
        },
        sweeps: 1,
        lambda: None,
        order: SweepOrder::Natural,
    };
    assert_eq!(
        cd.quantize(&problem(&w, &h)).unwrap_err(),
        QuantError::GgmlActOrder(Q5_1)
    );

    // Packing a layer that is not on the format's grids.
    let gptq_style = Rtn::new(GridSpec::reference(4, Some(32)).unwrap())
        .quantize(&problem(&w, &h))
        .unwrap();
    let err = pack_ggml(&gptq_style, Q4_0).unwrap_err();
    assert!(
        matches!(err, QuantError::GgmlSpec { expected: Q4_0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("q4_0") && err.to_string().contains("uniform grids"));
    let q41 = Rtn::new(GridSpec::ggml(Q4_1, GridFit::MinMax))
        .quantize(&problem(&w, &h))
        .unwrap();
    let err = pack_ggml(&q41, Q4_0).unwrap_err();
    assert!(err.to_string().contains("GGUF q4_1 grids"), "{err}");
    // ... and the GPTQ layout cannot hold `q * d + m`.
    assert!(matches!(
        pack_gptq(&q41, ZeroFormat::V2),
        Err(QuantError::Parameter(_))
    ));

    // Wrong byte lengths.
    let bytes = pack_ggml(&q41, Q4_1).unwrap();
    assert_eq!(bytes.len(), 3 * 2 * 20);
    assert_eq!(
        dequantize_ggml(&bytes[1..], Q4_1, 3, 64).unwrap_err(),
        QuantError::Length {
            what: "GGUF tensor bytes",
            expected: 120,
            actual: 119
        }
    );
    assert!(matches!(
        dequantize_ggml(&bytes, Q4_0, 3, 64),
        Err(QuantError::Length { .. })
    ));

    // Unknown names list the valid ones.
    let err = "q4_k_m".parse::<GgmlBlockType>().unwrap_err();
    assert_eq!(err, QuantError::UnknownGgmlType("q4_k_m".into()));
    for name in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q6_k"] {
        assert!(err.to_string().contains(name), "{err}");
    }
}
