//! llama.cpp's block formats as grids: the legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//! with their min-max and weighted fits, the K-quants (Q2_K ... Q6_K, fitted and laid out
//! in [`crate::kquant`]), and packing to the exact GGUF bytes and back.
//!
//! Written from llama.cpp's `ggml/src/ggml-common.h` (block structs) and
//! `ggml/src/ggml-quants.c` (`quantize_row_*_ref`, `dequantize_row_*`, and the imatrix
//! path `quantize_row_*_impl` with `make_qx_quants` / `make_qkx3_quants`).
//!
//! One GGUF row is one output channel (a column of `W`, in x out); its blocks run along
//! the inputs, 32 consecutive inputs each (256 for the K-quants). Legacy blocks, all
//! little-endian:
//! - `block_q4_0` (18 bytes): f16 `d`, `qs[16]` with `qs[j] = q[j] | q[j + 16] << 4`;
//!   value `(q - 8) * d`;
//! - `block_q4_1` (20 bytes): f16 `d`, f16 `m`, `qs[16]` as Q4_0; value `q * d + m`;
//! - `block_q5_0` (22 bytes): f16 `d`, `qh[4]` (a little-endian u32 whose bit `j` is bit
//!   4 of `q[j]`), `qs[16]` holding the low 4 bits as Q4_0; value `(q - 16) * d`;
//! - `block_q5_1` (24 bytes): f16 `d`, f16 `m`, `qh[4]`, `qs[16]`; value `q * d + m`;
//! - `block_q8_0` (34 bytes): f16 `d`, `qs[32]` int8; value `q * d`.

use std::fmt;
use std::str::FromStr;

use faer::Mat;
use half::f16;

use crate::error::check_length;
use crate::grid::round_ties_even;
use crate::kquant;
use crate::{Grid, QuantError, QuantizedLinear};

/// A GGUF block format: a legacy type (32 weights per block, one f16 scale, maybe an f16
/// minimum) or a K-quant (super-blocks of 256 weights in 16 or 8 sub-blocks, each with a
/// quantized scale, and a quantized minimum for Q2_K / Q4_K / Q5_K, against f16
/// super-block scales `d` and `dmin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(
    non_camel_case_types,
    reason = "the variants are llama.cpp's type names, Q4_0 beside Q4_K"
)]
pub enum GgmlBlockType {
    /// `d * (q - 8)`, 4-bit `q`, f16 `d`.
    Q4_0,
    /// `d * q + m`, 4-bit `q`, f16 `d` and `m`.
    Q4_1,
    /// `d * (q - 16)`, 5-bit `q`, f16 `d`.
    Q5_0,
    /// `d * q + m`, 5-bit `q`, f16 `d` and `m`.
    Q5_1,
    /// `d * q`, int8 `q`, f16 `d`.
    Q8_0,
    /// 16 sub-blocks of 16: `d * sc * q - dmin * m`, 2-bit `q`, 4-bit `sc` and `m`.
    Q2_K,
    /// 16 sub-blocks of 16: `d * (sc - 32) * (q - 4)`, 3-bit `q`, 6-bit `sc`.
    Q3_K,
    /// 8 sub-blocks of 32: `d * sc * q - dmin * m`, 4-bit `q`, 6-bit `sc` and `m`.
    Q4_K,
    /// 8 sub-blocks of 32: `d * sc * q - dmin * m`, 5-bit `q`, 6-bit `sc` and `m`.
    Q5_K,
    /// 16 sub-blocks of 16: `d * sc * (q - 32)`, 6-bit `q`, int8 `sc`.
    Q6_K,
}

/// How a grid's parameters are fitted to a group's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GridFit {
    /// From the group's extreme values (the reference quantizers; llama.cpp's
    /// `quantize_row_*_ref`).
    #[default]
    MinMax,
    /// A search minimising the weighted squared error `sum_i w_i (x_i - value_i)^2`,
    /// `w_i = H_ii` (llama.cpp's imatrix path). Only GGUF specs use it.
    Weighted,
}

impl GgmlBlockType {
    /// The legacy formats, in ggml type id order.
    pub const LEGACY: [Self; 5] = [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q5_1, Self::Q8_0];

    /// The K-quants, in ggml type id order.
    pub const K_QUANTS: [Self; 5] = [Self::Q2_K, Self::Q3_K, Self::Q4_K, Self::Q5_K, Self::Q6_K];

    /// Every supported format, in ggml type id order.
    pub const ALL: [Self; 10] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The `ggml_type` id written in a GGUF tensor header (`GGML_TYPE_Q4_0 = 2`, ...).
    pub fn type_id(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
        }
    }

    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            Self::Q2_K => 2,
            Self::Q3_K => 3,
            Self::Q4_0 | Self::Q4_1 | Self::Q4_K => 4,
            Self::Q5_0 | Self::Q5_1 | Self::Q5_K => 5,
            Self::Q6_K => 6,
            Self::Q8_0 => 8,
        }
    }

    /// Whether this is a K-quant (super-blocks of 256).
    pub fn is_k_quant(self) -> bool {
        Self::K_QUANTS.contains(&self)
    }

    /// Weights per block: 32 (`QK4_0` ... `QK8_0`), 256 for the K-quants (`QK_K`).
    pub fn block_size(self) -> usize {
        if self.is_k_quant() { 256 } else { 32 }
    }

    /// Weights per grid: the block (legacy), the sub-block (K-quants: 16 for Q2_K, Q3_K
    /// and Q6_K, 32 for Q4_K and Q5_K).
    pub fn group_size(self) -> usize {
        match self {
            Self::Q2_K | Self::Q3_K | Self::Q6_K => 16,
            _ => 32,
        }
    }

    /// Bytes per block (`sizeof(block_q4_0)` ...).
    pub fn bytes_per_block(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// The lowercase name, as llama.cpp's type table spells it (`q4_0` ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q2_K => "q2_K",
            Self::Q3_K => "q3_K",
            Self::Q4_K => "q4_K",
            Self::Q5_K => "q5_K",
            Self::Q6_K => "q6_K",
        }
    }

    /// Whether grids have a minimum: `q * d + m` (Q4_1, Q5_1), `q * d * sc - dmin * m`
    /// (Q2_K, Q4_K, Q5_K).
    pub fn has_min(self) -> bool {
        matches!(
            self,
            Self::Q4_1 | Self::Q5_1 | Self::Q2_K | Self::Q4_K | Self::Q5_K
        )
    }

    /// The grid's zero point: the code whose value is 0 (8, 16, 128; Q3_K 4, Q6_K 32; 0
    /// with a minimum).
    pub fn zero(self) -> u32 {
        match self {
            Self::Q4_0 => 8,
            Self::Q5_0 => 16,
            Self::Q8_0 => 128,
            Self::Q3_K => 4,
            Self::Q6_K => 32,
            Self::Q4_1 | Self::Q5_1 | Self::Q2_K | Self::Q4_K | Self::Q5_K => 0,
        }
    }

    /// Largest code, `2^bits - 1`.
    pub fn maxq(self) -> u32 {
        (1 << self.bits()) - 1
    }

    /// Checks that a row of `cols` weights is whole blocks.
    ///
    /// # Errors
    /// [`QuantError::GgmlWidth`] if `cols` is not a multiple of the block size.
    pub fn check_width(self, cols: usize) -> Result<(), QuantError> {
        if cols.is_multiple_of(self.block_size()) {
            Ok(())
        } else {
            Err(QuantError::GgmlWidth {
                inputs: cols,
                ty: self,
                block: self.block_size(),
            })
        }
    }

    /// Bytes of `rows` GGUF rows of `cols` weights each.
    ///
    /// # Errors
    /// `cols` not a multiple of the block size.
    pub fn row_bytes(self, rows: usize, cols: usize) -> Result<usize, QuantError> {
        self.check_width(cols)?;
        Ok(rows * cols / self.block_size() * self.bytes_per_block())
    }
}

impl fmt::Display for GgmlBlockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgmlBlockType {
    type Err = QuantError;

    /// `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `q2_k`, `q3_k`, `q4_k`, `q5_k` or `q6_k`, in
    /// any case.
    fn from_str(s: &str) -> Result<Self, QuantError> {
        Self::ALL
            .into_iter()
            .find(|ty| ty.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| QuantError::UnknownGgmlType(s.to_string()))
    }
}

/// `x` rounded to the nearest f16 value (ties to even, as `GGML_FP32_TO_FP16`), kept
/// within `+-65504` where the C code would store an infinity.
pub(crate) fn f16_value(x: f32) -> f32 {
    let h = f16::from_f32(x).to_f32();
    if h.is_infinite() {
        h.signum() * f16::MAX.to_f32()
    } else {
        h
    }
}

/// A group's level set: codes `0..=maxq`, value 0 at code `zero` (`scale * (q - zero)`),
/// or `q * scale + min` with a minimum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels {
    pub zero: u32,
    pub maxq: u32,
    pub has_min: bool,
    /// The minimum is kept `<= 0` (the K-quants store it as `-dmin * m` with `m >= 0`).
    pub nonpositive_min: bool,
}

impl Levels {
    /// The level set of a legacy type's blocks.
    fn legacy(ty: GgmlBlockType) -> Self {
        Self {
            zero: ty.zero(),
            maxq: ty.maxq(),
            has_min: ty.has_min(),
            nonpositive_min: false,
        }
    }

    /// The grid `(d, m)` with the parameters passed through `round` (f16 rounding for the
    /// legacy types, none for K sub-blocks before their scales are quantized).
    fn grid(self, d: f32, m: f32, round: fn(f32) -> f32) -> Grid {
        let m = if self.nonpositive_min { m.min(0.0) } else { m };
        Grid {
            scale: round(d),
            zero: self.zero,
            maxq: self.maxq,
            min: self.has_min.then(|| round(m)),
            sub_block: None,
        }
    }

    /// The min-max grid, as llama.cpp's `quantize_row_*_ref` for the legacy types, operation
    /// for operation: without a minimum, `d = max / -zero` with `max` the first value of
    /// largest magnitude (strict comparison, as the C loop; `d = amax / 127` for Q8_0,
    /// whose zero 128 has no negative counterpart); with a minimum `d = (max - min) / maxq`,
    /// `m = min` (clamped to `<= 0` where the minimum must be).
    pub fn min_max(self, values: impl IntoIterator<Item = f32>, round: fn(f32) -> f32) -> Grid {
        if self.has_min {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            let mut any = false;
            for v in values {
                any = true;
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            if !any {
                (min, max) = (0.0, 0.0);
            }
            if self.nonpositive_min {
                min = min.min(0.0);
            }
            self.grid((max - min) / self.maxq as f32, min, round)
        } else if self.zero == 128 {
            let amax = values
                .into_iter()
                .fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() });
            self.grid(amax / 127.0, 0.0, round)
        } else {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for v in values {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            self.grid(max / -(self.zero as f32), 0.0, round)
        }
    }

    /// The weighted search (see [`crate::GridSpec::fit_weighted`]): starting from the
    /// min-max grid, llama.cpp's scans (`make_qkx3_quants` with a minimum, `make_qx_quants`
    /// for both signs without), each candidate with its weighted least-squares
    /// parameters, then three least-squares refits of the best codes; a candidate
    /// replaces the best only when its weighted error `sum w (x - round(x))^2` is
    /// strictly smaller.
    pub fn search(self, x: &[f32], w: &[f32], round: fn(f32) -> f32) -> Grid {
        let n = x.len().min(w.len());
        let (x, w) = (&x[..n], &w[..n]);
        let first = self.min_max(x.iter().copied(), round);
        let mut s = Search {
            x,
            w,
            best: first,
            error: weighted_error(&first, x, w),
        };
        const REFITS: usize = 3;
        if self.has_min {
            let nmax = self.maxq as f32;
            let (mut min, max) = x
                .iter()
                .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if self.nonpositive_min {
                min = min.min(0.0);
            }
            if n == 0 || max <= min {
                return s.best;
            }
            // make_qkx3_quants' scan: rmin = -0.9, rdelta = 0.05, nstep = 36.
            let mut previous = Vec::new();
            for is in 0..=36 {
                let iscale = (-0.9 + 0.05 * is as f32 + nmax) / (max - min);
                let levels: Vec<f64> = x
                    .iter()
                    .map(|&v| nearest(iscale * (v - min)).clamp(0.0, nmax as f64))
                    .collect();
                s.consider(self.grid(1.0 / iscale, min, round));
                self.refit_new(&mut s, &levels, &mut previous, round);
            }
            for _ in 0..REFITS {
                let levels = s.best_levels();
                self.refit(&mut s, &levels, round);
            }
        } else {
            let (lo, hi) = (-(self.zero as f64), (self.maxq - self.zero) as f64);
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                return s.best;
            }
            // make_qx_quants' scan (`max` onto the extra negative level, -nmax) and the
            // other sign (`max` onto the top positive level), each with its least-squares
            // scale.
            let mut previous = Vec::new();
            for target in [lo as f32, hi as f32] {
                for is in -9..=9 {
                    let iscale = (target.abs() + 0.1 * is as f32) / max * target.signum();
                    let levels: Vec<f64> = x
                        .iter()
                        .map(|&v| nearest(iscale * v).clamp(lo, hi))
                        .collect();
                    s.consider(self.grid(1.0 / iscale, 0.0, round));
                    self.refit_new(&mut s, &levels, &mut previous, round);
                }
            }
            for _ in 0..REFITS {
                let levels = s.best_levels();
                self.refit(&mut s, &levels, round);
            }
        }
        s.best
    }

    /// [`Self::refit`] unless `levels` are the scan's `previous` ones, whose refit was
    /// considered already (neighbouring scales often give the same codes; considering the
    /// same grid again cannot change the best, which must be strictly better).
    fn refit_new(
        self,
        s: &mut Search<'_>,
        levels: &[f64],
        previous: &mut Vec<f64>,
        round: fn(f32) -> f32,
    ) {
        if previous.as_slice() != levels {
            self.refit(s, levels, round);
            previous.clear();
            previous.extend_from_slice(levels);
        }
    }

    /// Considers the weighted least-squares parameters of fixed signed `levels`: `(d, m)`
    /// with a minimum (`d` alone with `m = 0` where the free minimum would be positive
    /// and must not be), `d` without.
    fn refit(self, s: &mut Search<'_>, levels: &[f64], round: fn(f32) -> f32) {
        if self.has_min {
            match scale_min_for(s.x, s.w, levels) {
                Some((_, m)) if self.nonpositive_min && m > 0.0 => {
                    if let Some(d) = scale_for(s.x, s.w, levels) {
                        s.consider(self.grid(d as f32, 0.0, round));
                    }
                }
                Some((d, m)) => s.consider(self.grid(d as f32, m as f32, round)),
                None => {}
            }
        } else if let Some(d) = scale_for(s.x, s.w, levels) {
            s.consider(self.grid(d as f32, 0.0, round));
        }
    }
}

/// llama.cpp's `quantize_row_*_ref` block parameters of a legacy type (see
/// [`Levels::min_max`]), `d` and `m` rounded to f16 as stored.
pub(crate) fn fit_min_max(ty: GgmlBlockType, values: impl IntoIterator<Item = f32>) -> Grid {
    Levels::legacy(ty).min_max(values, f16_value)
}

/// `sum_i w_i (x_i - round(x_i))^2` in f64, rounding exactly as the quantizers do.
/// Summed in order (the rounding is done a chunk at a time by [`Grid::round_into`]).
pub(crate) fn weighted_error(grid: &Grid, x: &[f32], w: &[f32]) -> f64 {
    const CHUNK: usize = 64;
    let mut rounded = [0.0f32; CHUNK];
    let mut sum = 0.0f64;
    for (x, w) in x.chunks(CHUNK).zip(w.chunks(CHUNK)) {
        grid.round_into(x, &mut rounded);
        for ((&x, &w), &r) in x.iter().zip(w).zip(&rounded) {
            let d = x as f64 - r as f64;
            sum += w as f64 * d * d;
        }
    }
    sum
}

/// The best grid so far of a weighted search.
struct Search<'a> {
    x: &'a [f32],
    w: &'a [f32],
    best: Grid,
    error: f64,
}

impl Search<'_> {
    /// Keeps `grid` if its weighted error is strictly below the best so far.
    fn consider(&mut self, grid: Grid) {
        if !(grid.scale.is_finite() && grid.min.is_none_or(f32::is_finite)) {
            return;
        }
        let error = weighted_error(&grid, self.x, self.w);
        if error < self.error {
            self.best = grid;
            self.error = error;
        }
    }

    /// Signed codes `q - zero` of the best grid.
    fn best_levels(&self) -> Vec<f64> {
        let zero = self.best.zero as f64;
        self.x
            .iter()
            .map(|&x| self.best.code(x) as f64 - zero)
            .collect()
    }
}

/// Weighted least-squares scale for fixed signed levels: `sum w x l / sum w l^2`.
pub(crate) fn scale_for(x: &[f32], w: &[f32], levels: &[f64]) -> Option<f64> {
    let (mut sxl, mut sl2) = (0.0f64, 0.0f64);
    for ((&x, &w), &l) in x.iter().zip(w).zip(levels) {
        sxl += w as f64 * x as f64 * l;
        sl2 += w as f64 * l * l;
    }
    (sl2 > 0.0).then(|| sxl / sl2)
}

/// Weighted least-squares `(d, m)` for fixed codes: the minimiser of
/// `sum w (x - d l - m)^2`.
fn scale_min_for(x: &[f32], w: &[f32], levels: &[f64]) -> Option<(f64, f64)> {
    let (mut sw, mut sx, mut sl, mut sl2, mut sxl) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for ((&x, &w), &l) in x.iter().zip(w).zip(levels) {
        let (x, w) = (x as f64, w as f64);
        sw += w;
        sx += w * x;
        sl += w * l;
        sl2 += w * l * l;
        sxl += w * x * l;
    }
    let det = sw * sl2 - sl * sl;
    (det > 0.0).then(|| ((sw * sxl - sx * sl) / det, (sl2 * sx - sl * sxl) / det))
}

/// llama.cpp's `nearest_int` (round half to even in the default mode).
fn nearest(x: f32) -> f64 {
    round_ties_even(x) as f64
}

/// The weighted fit of a legacy type's block (see [`crate::GridSpec::fit_weighted`]).
pub(crate) fn fit_weighted(ty: GgmlBlockType, values: &[f32], weights: &[f32]) -> Grid {
    Levels::legacy(ty).search(values, weights, f16_value)
}

fn describe_spec(q: &QuantizedLinear) -> String {
    let spec = q.spec();
    match spec.ggml_type() {
        Some(ty) => format!("the GGUF {ty} grids"),
        None => format!(
            "uniform grids ({} bits, group size {:?}, symmetric {})",
            spec.bits(),
            spec.group_size(),
            spec.symmetric()
        ),
    }
}

/// Packs a layer quantized on a GGUF spec into the tensor bytes of its GGUF format: rows
/// are the output channels in order, each row's blocks in input order, each block
/// byte-exact as in `ggml-common.h` (layouts in the module docs and in `kquant.rs`). The
/// bytes dequantize, by llama.cpp's `dequantize_row_*` or [`dequantize_ggml`], to exactly
/// `q.dequantized()`.
///
/// # Errors
/// [`QuantError::GgmlSpec`] if `q` was not quantized on `ty`'s grids;
/// [`QuantError::GgmlWidth`] for an input width not a multiple of the block size;
/// [`QuantError::Parameter`] if an input is not in group `i / group size` (act-order) or
/// a grid is not storable (a scale or minimum that is not an f16 value, another zero
/// point, K-quant sub-blocks whose scales are not one super-block's).
pub fn pack_ggml(q: &QuantizedLinear, ty: GgmlBlockType) -> Result<Vec<u8>, QuantError> {
    if q.spec().ggml_type() != Some(ty) {
        return Err(QuantError::GgmlSpec {
            expected: ty,
            found: describe_spec(q),
        });
    }
    let (n, m) = (q.inputs(), q.outputs());
    let size = ty.row_bytes(m, n)?;
    let (qk, gs) = (ty.block_size(), ty.group_size());
    if let Some((i, &g)) = q
        .g_idx()
        .iter()
        .enumerate()
        .find(|&(i, &g)| g as usize != i / gs)
    {
        return Err(QuantError::Parameter(format!(
            "input {i} is in group {g}; a GGUF {ty} row needs input i in group i / {gs} (no act-order)"
        )));
    }
    let is_f16 = |v: f32| f16::from_f32(v).to_f32().to_bits() == v.to_bits();
    let mut out = Vec::with_capacity(size);
    for j in 0..m {
        let codes = &q.codes()[j * n..(j + 1) * n];
        for (b, block) in codes.chunks(qk).enumerate() {
            if let Some((k, &c)) = block
                .iter()
                .enumerate()
                .find(|&(_, &c)| c as u32 > ty.maxq())
            {
                return Err(QuantError::Code {
                    index: j * n + b * qk + k,
                    code: c as u32,
                    bits: ty.bits(),
                });
            }
            if ty.is_k_quant() {
                let grids: Vec<Grid> = (0..qk / gs)
                    .map(|k| q.group_grid(b * qk / gs + k, j))
                    .collect();
                kquant::pack_super_block(ty, block, &grids, &mut out).map_err(|e| {
                    QuantError::Parameter(format!("super-block {b} in output {j}: {e}"))
                })?;
                continue;
            }
            let grid = q.group_grid(b, j);
            let storable = is_f16(grid.scale)
                && grid.maxq == ty.maxq()
                && grid.zero == ty.zero()
                && grid.min.is_some() == ty.has_min()
                && grid.min.is_none_or(is_f16);
            if !storable {
                return Err(QuantError::Parameter(format!(
                    "the grid of block {b} in output {j} ({grid:?}) is not a GGUF {ty} block"
                )));
            }
            out.extend_from_slice(&f16::from_f32(grid.scale).to_le_bytes());
            if let Some(min) = grid.min {
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
            }
            match ty {
                GgmlBlockType::Q8_0 => {
                    out.extend(block.iter().map(|&c| (c as i32 - 128) as i8 as u8));
                }
                GgmlBlockType::Q5_0 | GgmlBlockType::Q5_1 => {
                    let qh = block
                        .iter()
                        .enumerate()
                        .fold(0u32, |qh, (k, &c)| qh | (((c as u32 >> 4) & 1) << k));
                    out.extend_from_slice(&qh.to_le_bytes());
                    out.extend(
                        (0..qk / 2).map(|k| (block[k] & 0x0F) | (block[k + qk / 2] & 0x0F) << 4),
                    );
                }
                _ => out.extend((0..qk / 2).map(|k| block[k] | block[k + qk / 2] << 4)),
            }
        }
    }
    debug_assert_eq!(out.len(), size);
    Ok(out)
}

/// Dequantizes `rows` GGUF rows of `cols` weights each (the tensor's `ne[1]` and
/// `ne[0]`), as llama.cpp's `dequantize_row_*` does, into `W`'s layout: a `cols x rows`
/// matrix (in x out) whose column `j` is row `j`. For a layer packed by [`pack_ggml`],
/// `rows` is the number of outputs and `cols` the number of inputs.
///
/// # Errors
/// [`QuantError::GgmlWidth`] if `cols` is not a multiple of the block size;
/// [`QuantError::Length`] if `bytes` does not hold exactly `rows * cols / block size`
/// blocks.
pub fn dequantize_ggml(
    bytes: &[u8],
    ty: GgmlBlockType,
    rows: usize,
    cols: usize,
) -> Result<Mat<f32>, QuantError> {
    let size = ty.row_bytes(rows, cols)?;
    check_length("GGUF tensor bytes", bytes.len(), size)?;
    const QK: usize = 32;
    let qk = ty.block_size();
    let half = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    let mut w = Mat::<f32>::zeros(cols, rows);
    let mut y = vec![0.0f32; qk];
    for (index, x) in bytes.chunks_exact(ty.bytes_per_block()).enumerate() {
        let (row, block) = (index / (cols / qk), index % (cols / qk));
        let d = half(x, 0);
        match ty {
            GgmlBlockType::Q2_K
            | GgmlBlockType::Q3_K
            | GgmlBlockType::Q4_K
            | GgmlBlockType::Q5_K
            | GgmlBlockType::Q6_K => kquant::dequantize_super_block(ty, x, &mut y),
            GgmlBlockType::Q4_0 => {
                let qs = &x[2..18];
                for j in 0..QK / 2 {
                    let x0 = (qs[j] & 0x0F) as i32 - 8;
                    let x1 = (qs[j] >> 4) as i32 - 8;
                    y[j] = x0 as f32 * d;
                    y[j + QK / 2] = x1 as f32 * d;
                }
            }
            GgmlBlockType::Q4_1 => {
                let m = half(x, 2);
                let qs = &x[4..20];
                for j in 0..QK / 2 {
                    let x0 = (qs[j] & 0x0F) as i32;
                    let x1 = (qs[j] >> 4) as i32;
                    y[j] = x0 as f32 * d + m;
                    y[j + QK / 2] = x1 as f32 * d + m;
                }
            }
            GgmlBlockType::Q5_0 | GgmlBlockType::Q5_1 => {
                let (m, at) = if ty == GgmlBlockType::Q5_1 {
                    (Some(half(x, 2)), 4)
                } else {
                    (None, 2)
                };
                let qh = u32::from_le_bytes([x[at], x[at + 1], x[at + 2], x[at + 3]]);
                let qs = &x[at + 4..at + 20];
                for j in 0..QK / 2 {
                    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let x0 = ((qs[j] & 0x0F) | xh_0) as i32;
                    let x1 = ((qs[j] >> 4) | xh_1) as i32;
                    match m {
                        None => {
                            y[j] = (x0 - 16) as f32 * d;
                            y[j + QK / 2] = (x1 - 16) as f32 * d;
                        }
                        Some(m) => {
                            y[j] = x0 as f32 * d + m;
                            y[j + QK / 2] = x1 as f32 * d + m;
                        }
                    }
                }
            }
            GgmlBlockType::Q8_0 => {
                for (y, &q) in y.iter_mut().zip(&x[2..34]) {
                    *y = q as i8 as f32 * d;
                }
            }
        }
        for (k, &v) in y.iter().enumerate() {
            w[(block * qk + k, row)] = v;
        }
    }
    Ok(w)
}
