//! llama.cpp's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): fitting a super-block's grids,
//! and the super-block's bytes both ways.
//!
//! A super-block is 256 consecutive inputs of one output row; input `e` of it lies in
//! sub-block `e / 16` (Q2_K, Q3_K, Q6_K) or `e / 32` (Q4_K, Q5_K). Layouts, from
//! `ggml-common.h` and `dequantize_row_q*_K` in `ggml-quants.c` (f16 little-endian):
//! - `block_q2_K` (84 bytes): `scales[16]` (`sc | m << 4`), `qs[64]`, `d`, `dmin`; the
//!   2-bit code of `e` is `qs[e / 128 * 32 + e % 32] >> (2 * (e % 128 / 32)) & 3`;
//!   value `d * sc * q - dmin * m`;
//! - `block_q3_K` (110 bytes): `hmask[32]`, `qs[64]`, `scales[12]`, `d`; the 3-bit code
//!   is the 2 low bits as Q2_K plus bit `e / 32` of `hmask[e % 32]` as bit 2; the 6-bit
//!   scale code of sub-block `j` has its low 4 bits in nibble `j / 8` of `scales[j % 8]`
//!   and its high 2 bits at bit `2 * (j / 4)` of `scales[8 + j % 4]`; value
//!   `d * (sc - 32) * (q - 4)`;
//! - `block_q4_K` (144 bytes): `d`, `dmin`, `scales[12]`, `qs[128]`; the 4-bit code of
//!   `e` is nibble `e % 64 / 32` of `qs[e / 64 * 32 + e % 32]`; the 6-bit scale and minimum
//!   codes of sub-block `j` as `get_scale_min_k4` reads them (`j < 4`: `scales[j] & 63`
//!   and `scales[j + 4] & 63`; else the low 4 bits in the nibbles of `scales[j + 4]` and
//!   the high 2 bits in bits 6-7 of `scales[j - 4]` and `scales[j]`); value
//!   `d * sc * q - dmin * m`;
//! - `block_q5_K` (176 bytes): `d`, `dmin`, `scales[12]` as Q4_K, `qh[32]` (bit `e / 32`
//!   of `qh[e % 32]` is bit 4 of the code), `qs[128]` holding the low 4 bits as Q4_K;
//! - `block_q6_K` (210 bytes): `ql[128]`, `qh[64]`, `scales[16]` (int8), `d`; the low 4
//!   bits of the 6-bit code are nibble `e % 128 / 64` of `ql[e / 128 * 64 + e % 64]`, the
//!   high 2 bits at bit `2 * (e % 128 / 32)` of `qh[e / 128 * 32 + e % 32]`; value
//!   `d * sc * (q - 32)`.

use half::f16;

use crate::ggml::{Levels, f16_value, weighted_error};
use crate::{GgmlBlockType, Grid, GridFit, SubBlockScales};

/// Weights per super-block (`QK_K`).
pub(crate) const QK_K: usize = 256;

/// The range of a type's sub-block scale codes, read as the format reads them.
fn scale_range(ty: GgmlBlockType) -> (i32, i32) {
    match ty {
        GgmlBlockType::Q2_K => (0, 15),
        GgmlBlockType::Q3_K => (-32, 31),
        GgmlBlockType::Q6_K => (-128, 127),
        _ => (0, 63),
    }
}

/// The stored byte of a scale code `sc` in [`scale_range`] (Q3_K: `sc + 32`; Q6_K: int8).
fn scale_byte(ty: GgmlBlockType, sc: i32) -> u8 {
    match ty {
        GgmlBlockType::Q3_K => (sc + 32) as u8,
        _ => sc as i8 as u8,
    }
}

/// The scale code of a stored byte (inverse of [`scale_byte`]).
fn scale_code(ty: GgmlBlockType, byte: u8) -> i32 {
    match ty {
        GgmlBlockType::Q3_K => byte as i32 - 32,
        GgmlBlockType::Q6_K => byte as i8 as i32,
        _ => byte as i32,
    }
}

/// The grid of a sub-block with super-block scales `d`, `dmin` (f16 values) and stored
/// scale and minimum bytes.
pub(crate) fn sub_block_grid(ty: GgmlBlockType, d: f32, dmin: f32, scale: u8, min: u8) -> Grid {
    let dmin = if ty.has_min() { dmin } else { 0.0 };
    let min = if ty.has_min() { min } else { 0 };
    Grid {
        scale: d * scale_code(ty, scale) as f32,
        zero: ty.zero(),
        maxq: ty.maxq(),
        min: ty.has_min().then(|| -(dmin * min as f32)),
        sub_block: Some(SubBlockScales {
            d,
            dmin,
            scale,
            min,
        }),
    }
}

/// One candidate parameter set of a super-block: its f16 scales and per sub-block stored
/// bytes, with its weighted error.
#[derive(Clone)]
struct Candidate {
    d: f32,
    dmin: f32,
    scales: Vec<u8>,
    mins: Vec<u8>,
    error: f64,
}

/// The fit of one super-block (or, from [`crate::GridSpec::fit`], of any run of values as
/// sub-blocks): `values.len() / grids.len()` inputs per sub-block.
///
/// 1. Each sub-block gets a float grid `value = s_j * (q - zero)` or `s_j * q - mn_j`
///    (`mn_j >= 0`): min-max, or for [`GridFit::Weighted`] the weighted search of the
///    legacy formats (weights `H_ii`), in f32 without f16 rounding.
/// 2. The scales are quantized as llama.cpp does: `d = s_max / smax` (for Q3_K / Q6_K,
///    whose scales are signed, the scale of largest magnitude goes onto the most negative
///    code: `d = s_max / -32`, `/ -128`), `dmin = mn_max / mmax`, rounded to f16; each
///    sub-block's codes `round(s_j / d)`, `round(mn_j / dmin)`, clamped.
/// 3. [`GridFit::Weighted`] only: candidates with other super-block scales (the
///    least-squares `(d, dmin)` of the best candidate's codes, and `d` scaled by 0.9 ...
///    1.1), each with every sub-block's scale and minimum codes moved by at most one step
///    where that lowers the sub-block's weighted error; the candidate with the smallest
///    weighted error `sum w (x - round(x))^2` wins, the one of step 2 only replaced by a
///    strictly better one.
pub(crate) fn fit_super_block(
    ty: GgmlBlockType,
    fit: GridFit,
    values: &[f32],
    weights: &[f32],
    grids: &mut [Grid],
) {
    let nsub = grids.len();
    if nsub == 0 {
        return;
    }
    let sub = values.len() / nsub;
    let weighted = fit == GridFit::Weighted;
    let w: Vec<f32> = (0..values.len())
        .map(|i| weights.get(i).copied().unwrap_or(1.0))
        .collect();
    let levels = Levels {
        zero: ty.zero(),
        maxq: ty.maxq(),
        has_min: ty.has_min(),
        nonpositive_min: true,
    };
    let float = |x: f32| x;
    // Step 1: float sub-block grids (s_j, mn_j).
    let (mut s, mut mn) = (vec![0.0f32; nsub], vec![0.0f32; nsub]);
    for j in 0..nsub {
        let span = j * sub..(j + 1) * sub;
        let grid = if weighted {
            levels.search(&values[span.clone()], &w[span], float)
        } else {
            levels.min_max(values[span].iter().copied(), float)
        };
        s[j] = if ty.has_min() {
            grid.scale.max(0.0)
        } else {
            grid.scale
        };
        mn[j] = -grid.min.unwrap_or(0.0);
    }
    // Step 2: quantized scales.
    let (slo, shi) = scale_range(ty);
    let (mut smax, mut amax) = (0.0f32, 0.0f32);
    for &v in &s {
        if v.abs() > amax {
            amax = v.abs();
            smax = v;
        }
    }
    let d = f16_value(if slo < 0 {
        smax / slo as f32
    } else {
        smax / shi as f32
    });
    let mn_max = mn.iter().fold(0.0f32, |a, &v| a.max(v));
    let dmin = if ty.has_min() {
        f16_value(mn_max / shi as f32)
    } else {
        0.0
    };
    let problem = SuperBlock {
        ty,
        x: values,
        w: &w,
        sub,
        s: &s,
        mn: &mn,
    };
    let mut best = problem.candidate(d, dmin, false);
    if weighted {
        let consider = |best: &mut Candidate, c: Candidate| {
            if c.error < best.error {
                *best = c;
            }
        };
        let refined = problem.candidate(d, dmin, true);
        consider(&mut best, refined);
        for factor in [0.9f32, 0.95, 1.05, 1.1] {
            let c = problem.candidate(f16_value(d * factor), dmin, true);
            consider(&mut best, c);
        }
        if let Some((d2, dmin2)) = problem.least_squares(&best) {
            let c = problem.candidate(d2, dmin2, true);
            consider(&mut best, c);
        }
    }
    for (j, grid) in grids.iter_mut().enumerate() {
        *grid = sub_block_grid(ty, best.d, best.dmin, best.scales[j], best.mins[j]);
    }
}

/// The data of one super-block fit.
struct SuperBlock<'a> {
    ty: GgmlBlockType,
    x: &'a [f32],
    w: &'a [f32],
    sub: usize,
    /// The float sub-block scales and minimums of step 1.
    s: &'a [f32],
    mn: &'a [f32],
}

impl SuperBlock<'_> {
    /// The candidate with super-block scales `d`, `dmin`: each sub-block's codes rounded
    /// from its float scale and minimum, and with `neighbours`, the best codes within one
    /// step of those.
    fn candidate(&self, d: f32, dmin: f32, neighbours: bool) -> Candidate {
        let ty = self.ty;
        // Minimum codes share the scale codes' top (the types with minimums are unsigned).
        let (slo, shi) = scale_range(ty);
        let mmax = shi;
        let code = |v: f32, step: f32, lo: i32, hi: i32| -> i32 {
            if step == 0.0 || !step.is_finite() {
                0
            } else {
                (crate::grid::round_ties_even(v / step) as i32).clamp(lo, hi)
            }
        };
        let nsub = self.s.len();
        let mut c = Candidate {
            d,
            dmin,
            scales: Vec::with_capacity(nsub),
            mins: Vec::with_capacity(nsub),
            error: 0.0,
        };
        for j in 0..nsub {
            let span = j * self.sub..(j + 1) * self.sub;
            let (x, w) = (&self.x[span.clone()], &self.w[span]);
            let sc0 = code(self.s[j], d, slo, shi);
            let m0 = if ty.has_min() {
                code(self.mn[j], dmin, 0, mmax)
            } else {
                0
            };
            let reach = if neighbours { 1 } else { 0 };
            let m_reach = if ty.has_min() { reach } else { 0 };
            let mut best: Option<(f64, u8, u8)> = None;
            for sc in (sc0 - reach).max(slo)..=(sc0 + reach).min(shi) {
                for m in (m0 - m_reach).max(0)..=(m0 + m_reach).min(mmax) {
                    let (sb, mb) = (scale_byte(ty, sc), m as u8);
                    let grid = sub_block_grid(ty, d, dmin, sb, mb);
                    let e = weighted_error(&grid, x, w);
                    if best.is_none_or(|(b, _, _)| e < b) {
                        best = Some((e, sb, mb));
                    }
                }
            }
            let (e, sb, mb) = best.unwrap_or((0.0, scale_byte(ty, sc0), m0 as u8));
            c.error += e;
            c.scales.push(sb);
            c.mins.push(mb);
        }
        c
    }

    /// The weighted least-squares super-block scales for the codes of `c`: with
    /// `a_i = sc_j * (q_i - zero)` and `b_i = -m_j`, the minimiser of
    /// `sum w (x - d a - dmin b)^2` (`d` alone without minimums), rounded to f16.
    fn least_squares(&self, c: &Candidate) -> Option<(f32, f32)> {
        let ty = self.ty;
        let grids: Vec<Grid> = (0..c.scales.len())
            .map(|j| sub_block_grid(ty, c.d, c.dmin, c.scales[j], c.mins[j]))
            .collect();
        let (mut saa, mut sab, mut sbb, mut sxa, mut sxb) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
        for (i, (&x, &w)) in self.x.iter().zip(self.w).enumerate() {
            let j = i / self.sub;
            let q = grids[j].code(x) as f64 - ty.zero() as f64;
            let a = scale_code(ty, c.scales[j]) as f64 * q;
            let b = -(c.mins[j] as f64);
            let (x, w) = (x as f64, w as f64);
            saa += w * a * a;
            sab += w * a * b;
            sbb += w * b * b;
            sxa += w * x * a;
            sxb += w * x * b;
        }
        if !ty.has_min() || sbb == 0.0 {
            return (saa > 0.0).then(|| (f16_value((sxa / saa) as f32), c.dmin));
        }
        let det = saa * sbb - sab * sab;
        (det > 0.0).then(|| {
            let d = (sxa * sbb - sxb * sab) / det;
            let dmin = (saa * sxb - sab * sxa) / det;
            (f16_value(d as f32), f16_value(dmin.max(0.0) as f32))
        })
    }
}

/// The sub-block scales of every grid of one super-block, checked to share `d` and
/// `dmin` and to be what the bytes will say.
fn stored_scales(ty: GgmlBlockType, grids: &[Grid]) -> Result<(f32, f32), String> {
    let first = grids
        .first()
        .and_then(|g| g.sub_block)
        .ok_or("a grid without K-quant sub-block scales")?;
    for (j, grid) in grids.iter().enumerate() {
        let Some(sb) = grid.sub_block else {
            return Err(format!("sub-block {j} has no K-quant scales"));
        };
        let expected = sub_block_grid(ty, first.d, first.dmin, sb.scale, sb.min);
        let f16_exact = |v: f32| f16::from_f32(v).to_f32().to_bits() == v.to_bits();
        if sb.d.to_bits() != first.d.to_bits()
            || sb.dmin.to_bits() != first.dmin.to_bits()
            || !f16_exact(first.d)
            || !f16_exact(first.dmin)
            || expected != *grid
        {
            return Err(format!(
                "sub-block {j} ({grid:?}) is not a {ty} sub-block of super-block scales d = {}, dmin = {}",
                first.d, first.dmin
            ));
        }
    }
    Ok((first.d, first.dmin))
}

/// Appends the bytes of one super-block: `codes` (256, each `<= maxq`) and the grids of
/// its sub-blocks.
///
/// # Errors
/// A message if the grids are not one super-block's (see [`stored_scales`]).
pub(crate) fn pack_super_block(
    ty: GgmlBlockType,
    codes: &[u8],
    grids: &[Grid],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let (d, dmin) = stored_scales(ty, grids)?;
    let scales: Vec<u8> = grids
        .iter()
        .map(|g| g.sub_block.unwrap_or_default().scale)
        .collect();
    let mins: Vec<u8> = grids
        .iter()
        .map(|g| g.sub_block.unwrap_or_default().min)
        .collect();
    let half = |v: f32| f16::from_f32(v).to_le_bytes();
    // The 2-bit fields shared by Q2_K's codes and Q3_K's low bits.
    let low2 = |out: &mut Vec<u8>| {
        out.extend((0..64).map(|k| {
            let base = k / 32 * 128 + k % 32;
            (0..4).fold(0u8, |b, s| b | (codes[base + 32 * s] & 3) << (2 * s))
        }));
    };
    match ty {
        GgmlBlockType::Q2_K => {
            out.extend((0..16).map(|j| scales[j] & 0xF | (mins[j] & 0xF) << 4));
            low2(out);
            out.extend_from_slice(&half(d));
            out.extend_from_slice(&half(dmin));
        }
        GgmlBlockType::Q3_K => {
            out.extend(
                (0..32).map(|k| {
                    (0..8).fold(0u8, |b, bit| b | ((codes[k + 32 * bit] >> 2) & 1) << bit)
                }),
            );
            low2(out);
            let mut packed = [0u8; 12];
            for (j, &sc) in scales.iter().enumerate() {
                packed[j % 8] |= (sc & 0xF) << (4 * (j / 8));
                packed[8 + j % 4] |= ((sc >> 4) & 3) << (2 * (j / 4));
            }
            out.extend_from_slice(&packed);
            out.extend_from_slice(&half(d));
        }
        GgmlBlockType::Q4_K | GgmlBlockType::Q5_K => {
            out.extend_from_slice(&half(d));
            out.extend_from_slice(&half(dmin));
            let mut packed = [0u8; 12];
            for j in 0..8 {
                let (ls, lm) = (scales[j] & 63, mins[j] & 63);
                if j < 4 {
                    packed[j] |= ls;
                    packed[j + 4] |= lm;
                } else {
                    packed[j + 4] = (ls & 0xF) | (lm & 0xF) << 4;
                    packed[j - 4] |= (ls >> 4) << 6;
                    packed[j] |= (lm >> 4) << 6;
                }
            }
            out.extend_from_slice(&packed);
            if ty == GgmlBlockType::Q5_K {
                out.extend((0..32).map(|k| {
                    (0..8).fold(0u8, |b, bit| b | ((codes[k + 32 * bit] >> 4) & 1) << bit)
                }));
            }
            out.extend((0..128).map(|k| {
                let base = k / 32 * 64 + k % 32;
                codes[base] & 0xF | (codes[base + 32] & 0xF) << 4
            }));
        }
        GgmlBlockType::Q6_K => {
            out.extend((0..128).map(|k| {
                let base = k / 64 * 128 + k % 64;
                codes[base] & 0xF | (codes[base + 64] & 0xF) << 4
            }));
            out.extend((0..64).map(|k| {
                let base = k / 32 * 128 + k % 32;
                (0..4).fold(0u8, |b, s| b | ((codes[base + 32 * s] >> 4) & 3) << (2 * s))
            }));
            out.extend_from_slice(&scales);
            out.extend_from_slice(&half(d));
        }
        _ => return Err(format!("{ty} is not a K-quant")),
    }
    Ok(())
}

/// Dequantizes one super-block's bytes into `y` (256 values), as llama.cpp's
/// `dequantize_row_q*_K`: each value from its code and its sub-block's grid.
pub(crate) fn dequantize_super_block(ty: GgmlBlockType, x: &[u8], y: &mut [f32]) {
    let half = |at: usize| f16::from_le_bytes([x[at], x[at + 1]]).to_f32();
    let low2 = |qs: &[u8], e: usize| (qs[e / 128 * 32 + e % 32] >> (2 * (e % 128 / 32))) & 3;
    let sub = ty.group_size();
    let (codes, grids): (Vec<u8>, Vec<Grid>) = match ty {
        GgmlBlockType::Q2_K => {
            let (scales, qs) = (&x[..16], &x[16..80]);
            let (d, dmin) = (half(80), half(82));
            (
                (0..QK_K).map(|e| low2(qs, e)).collect(),
                scales
                    .iter()
                    .map(|&b| sub_block_grid(ty, d, dmin, b & 0xF, b >> 4))
                    .collect(),
            )
        }
        GgmlBlockType::Q3_K => {
            let (hmask, qs, scales) = (&x[..32], &x[32..96], &x[96..108]);
            let d = half(108);
            (
                (0..QK_K)
                    .map(|e| low2(qs, e) | ((hmask[e % 32] >> (e / 32)) & 1) << 2)
                    .collect(),
                (0..16)
                    .map(|j| {
                        let low = (scales[j % 8] >> (4 * (j / 8))) & 0xF;
                        let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
                        sub_block_grid(ty, d, 0.0, low | high << 4, 0)
                    })
                    .collect(),
            )
        }
        GgmlBlockType::Q4_K | GgmlBlockType::Q5_K => {
            let (d, dmin, scales) = (half(0), half(2), &x[4..16]);
            let (qh, qs) = if ty == GgmlBlockType::Q5_K {
                (Some(&x[16..48]), &x[48..176])
            } else {
                (None, &x[16..144])
            };
            (
                (0..QK_K)
                    .map(|e| {
                        let low = (qs[e / 64 * 32 + e % 32] >> (4 * (e % 64 / 32))) & 0xF;
                        low | qh.map_or(0, |qh| ((qh[e % 32] >> (e / 32)) & 1) << 4)
                    })
                    .collect(),
                (0..8)
                    .map(|j| {
                        let (sc, m) = scale_min_k4(j, scales);
                        sub_block_grid(ty, d, dmin, sc, m)
                    })
                    .collect(),
            )
        }
        GgmlBlockType::Q6_K => {
            let (ql, qh, scales) = (&x[..128], &x[128..192], &x[192..208]);
            let d = half(208);
            (
                (0..QK_K)
                    .map(|e| {
                        let low = (ql[e / 128 * 64 + e % 64] >> (4 * (e % 128 / 64))) & 0xF;
                        let high = (qh[e / 128 * 32 + e % 32] >> (2 * (e % 128 / 32))) & 3;
                        low | high << 4
                    })
                    .collect(),
                scales
                    .iter()
                    .map(|&b| sub_block_grid(ty, d, 0.0, b, 0))
                    .collect(),
            )
        }
        _ => return,
    };
    for (e, y) in y.iter_mut().enumerate().take(QK_K) {
        *y = grids[e / sub].value(codes[e] as u32);
    }
}

/// llama.cpp's `get_scale_min_k4`: the 6-bit scale and minimum codes of sub-block `j`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
