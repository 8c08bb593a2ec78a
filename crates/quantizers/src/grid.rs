//! Uniform quantization grids, exactly as in the GPTQ / MagR reference quantizer.

use crate::QuantError;
use crate::ggml::{self, GgmlBlockType, GridFit};

/// The settings that define a grid family: bit width, grouping, symmetry, shrink factor;
/// or one of llama.cpp's legacy block formats ([`GridSpec::ggml`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSpec {
    bits: u32,
    group_size: Option<usize>,
    symmetric: bool,
    beta: f32,
    ggml: Option<GgmlBlockType>,
    fit: GridFit,
}

/// The shrink factor `beta` of the MagR paper's experiments: 1.0 at 8 bits; else 0.95
/// with groups of 128 inputs; else (per channel, and for other group sizes, which the
/// paper does not use) 1.0 at 4 bits, 0.9 at 3 and 0.8 at 2.
pub fn reference_beta(bits: u32, group_size: Option<usize>) -> f32 {
    match (bits, group_size) {
        (8, _) => 1.0,
        (_, Some(128)) => 0.95,
        (2, _) => 0.8,
        (3, _) => 0.9,
        _ => 1.0,
    }
}

impl GridSpec {
    /// A grid family; `group_size: None` means one grid per output channel, `Some(g)` one
    /// grid per `g` consecutive inputs of each channel.
    ///
    /// # Errors
    /// Bits outside {2, 3, 4, 8}; a group size of 0; `beta` not in (0, 1].
    pub fn new(
        bits: u32,
        group_size: Option<usize>,
        symmetric: bool,
        beta: f32,
    ) -> Result<Self, QuantError> {
        if ![2, 3, 4, 8].contains(&bits) {
            return Err(QuantError::Bits(bits));
        }
        if group_size == Some(0) {
            return Err(QuantError::Parameter("group size must be positive".into()));
        }
        if !(beta > 0.0 && beta <= 1.0) {
            return Err(QuantError::Parameter(format!(
                "beta must be in (0, 1], got {beta}"
            )));
        }
        Ok(Self {
            bits,
            group_size,
            symmetric,
            beta,
            ggml: None,
            fit: GridFit::MinMax,
        })
    }

    /// The grid family of a GGUF block format: one grid per group of
    /// [`GgmlBlockType::group_size`] consecutive inputs of one output channel (a legacy
    /// block of 32, a K-quant sub-block of 16 or 32), the format's bits, `beta = 1`,
    /// symmetric for the types without a minimum. A fitted [`Grid`] holds the block's
    /// parameters as stored (f16 values `d`, and `m` for Q4_1 / Q5_1; for a K-quant
    /// sub-block its [`SubBlockScales`]), and its [`Grid::value`] is the value llama.cpp's
    /// `dequantize_row_*` computes. The grids of a K-quant super-block (256 inputs) are
    /// fitted together ([`GridSpec::fit_span`]).
    ///
    /// `fit` chooses how the block parameters are found: [`GridFit::MinMax`] is
    /// llama.cpp's `quantize_row_*_ref`; [`GridFit::Weighted`] searches for the parameters
    /// minimising `sum_i w_i (x_i - value_i)^2` with `w_i = H_ii` (see
    /// [`GridSpec::fit_weighted`]).
    pub fn ggml(ty: GgmlBlockType, fit: GridFit) -> Self {
        Self {
            bits: ty.bits(),
            group_size: Some(ty.group_size()),
            symmetric: !ty.has_min(),
            beta: 1.0,
            ggml: Some(ty),
            fit,
        }
    }

    /// Asymmetric grid with [`reference_beta`] for these bits and group size.
    ///
    /// # Errors
    /// As [`GridSpec::new`].
    pub fn reference(bits: u32, group_size: Option<usize>) -> Result<Self, QuantError> {
        Self::new(bits, group_size, false, reference_beta(bits, group_size))
    }

    /// Bit width.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Inputs per group (`None`: per channel).
    pub fn group_size(&self) -> Option<usize> {
        self.group_size
    }
    /// Whether the grid is symmetric about zero.
    pub fn symmetric(&self) -> bool {
        self.symmetric
    }
    /// Shrink factor applied to the range.
    pub fn beta(&self) -> f32 {
        self.beta
    }
    /// Largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }
    /// The GGUF block format these grids follow, if any.
    pub fn ggml_type(&self) -> Option<GgmlBlockType> {
        self.ggml
    }
    /// How grids are fitted: [`GridFit::MinMax`] unless a GGUF spec asked for
    /// [`GridFit::Weighted`].
    pub fn grid_fit(&self) -> GridFit {
        self.fit
    }

    /// Inputs per group for a layer with `inputs` inputs: the group size, or `inputs`
    /// per channel. `inputs.div_ceil(group_rows)` is the number of groups
    /// ([`GridSpec::groups`]): as in the GPTQ reference, a group size that does not divide
    /// `inputs` leaves the last group shorter (576 inputs in groups of 128: four of 128
    /// and one of 64).
    ///
    /// # Errors
    /// No inputs, a GGUF format whose blocks do not divide `inputs`.
    pub fn group_rows(&self, inputs: usize) -> Result<usize, QuantError> {
        if let Some(ty) = self.ggml
            && inputs > 0
        {
            ty.check_width(inputs)?;
        }
        match self.group_size {
            _ if inputs == 0 => Err(QuantError::Parameter(
                "a layer needs at least one input".into(),
            )),
            None => Ok(inputs),
            Some(g) => Ok(g),
        }
    }

    /// Groups per channel for a layer with `inputs` inputs (the last one maybe shorter).
    ///
    /// # Errors
    /// As [`GridSpec::group_rows`].
    pub fn groups(&self, inputs: usize) -> Result<usize, QuantError> {
        Ok(inputs.div_ceil(self.group_rows(inputs)?))
    }

    /// Inputs whose grids are fitted together, for a layer with `inputs` inputs: a K-quant
    /// super-block (256), else one group ([`GridSpec::group_rows`]); a multiple of the
    /// group rows (the last span is shorter where the last group is).
    ///
    /// # Errors
    /// As [`GridSpec::group_rows`].
    pub fn fit_span(&self, inputs: usize) -> Result<usize, QuantError> {
        let rows = self.group_rows(inputs)?;
        Ok(match self.ggml {
            Some(ty) => ty.block_size(),
            None => rows,
        })
    }

    /// Fits the grids of one fit span ([`GridSpec::fit_span`]) of one channel to its
    /// `values`, one grid per group into `grids` (as many as the span has groups), with
    /// per-value `weights` (`H_ii`) for a weighted fit: [`GridSpec::fit_weighted`] per
    /// group, except on K-quant specs, whose super-block parameters are fitted together
    /// (see [`crate::GridFit`] and the `kquant` module).
    pub fn fit_span_grids(&self, values: &[f32], weights: &[f32], grids: &mut [Grid]) {
        match self.ggml {
            Some(ty) if ty.is_k_quant() => {
                crate::kquant::fit_super_block(ty, self.fit, values, weights, grids);
            }
            _ => {
                let rows = values.len().div_ceil(grids.len().max(1)).max(1);
                for (g, (grid, x)) in grids.iter_mut().zip(values.chunks(rows)).enumerate() {
                    let w = weights.get(g * rows..g * rows + x.len()).unwrap_or(&[]);
                    *grid = self.fit_weighted(x, w);
                }
            }
        }
    }

    /// Fits the grid of one group of one channel to its weights:
    /// `xmin = min(min x, 0)`, `xmax = max(max x, 0)`; symmetric: `xmax = max(|xmin|, xmax)`
    /// and `xmin = -xmax` where `xmin < 0`; `[-1, 1]` if both are 0;
    /// `scale = beta (xmax - xmin) / maxq` rounded to the nearest f16 value (checkpoints
    /// store scales in f16, so the dequantized weights are exactly what a loader computes);
    /// `zero = round(-xmin / scale)` (ties to even) or `2^bits / 2` (symmetric).
    ///
    /// With `beta < 1` the asymmetric zero point can exceed `maxq` (up to
    /// `round(maxq / beta)`); codes stay in `0..=maxq`.
    ///
    /// GGUF specs: llama.cpp's min-max fit (`quantize_row_*_ref`, whatever
    /// [`GridSpec::grid_fit`] says): Q4_0 / Q5_0 `d = max / -8` (`/ -16`) with `max` the
    /// first value of largest magnitude, in order (so `d` is negative when that value is
    /// positive); Q8_0 `d = amax / 127`; Q4_1 / Q5_1 `d = (max - min) / 15` (`/ 31`) and
    /// `m = min`; each rounded to f16 as stored. The one departure from the C code: an `d`
    /// or `m` beyond the f16 range is kept at `+-65504` instead of becoming infinite.
    ///
    /// K-quant specs, whose grids are fitted a super-block at a time
    /// ([`GridSpec::fit_span_grids`]): the min-max fit of `values` as one sub-block with
    /// its own super-block scales.
    pub fn fit(&self, values: impl IntoIterator<Item = f32>) -> Grid {
        if let Some(ty) = self.ggml {
            if ty.is_k_quant() {
                let values: Vec<f32> = values.into_iter().collect();
                let mut grid = [Grid::default()];
                crate::kquant::fit_super_block(ty, GridFit::MinMax, &values, &[], &mut grid);
                return grid[0];
            }
            return ggml::fit_min_max(ty, values);
        }
        let (lo, hi) = values
            .into_iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), x| (lo.min(x), hi.max(x)));
        self.fit_range(lo, hi)
    }

    /// [`GridSpec::fit`] for weights whose minimum is `lo` and maximum `hi`. (GGUF
    /// `_0` specs, which depend on the order of the values, take `hi` when
    /// `|lo| == |hi|`.)
    pub fn fit_range(&self, lo: f32, hi: f32) -> Grid {
        if let Some(ty) = self.ggml {
            if ty.is_k_quant() {
                return self.fit([lo, hi]);
            }
            let first = if lo.abs() > hi.abs() {
                [lo, hi]
            } else {
                [hi, lo]
            };
            return ggml::fit_min_max(ty, first);
        }
        let (mut xmin, mut xmax) = (lo.min(0.0), hi.max(0.0));
        if self.symmetric {
            xmax = xmax.max(xmin.abs());
            if xmin < 0.0 {
                xmin = -xmax;
            }
        }
        if xmin == 0.0 && xmax == 0.0 {
            xmin = -1.0;
            xmax = 1.0;
        }
        let maxq = self.maxq();
        let scale = f16_scale(self.beta * (xmax - xmin) / maxq as f32);
        let zero = if self.symmetric {
            1 << (self.bits - 1)
        } else {
            (-xmin / scale).round_ties_even() as u32
        };
        Grid {
            scale,
            zero,
            maxq,
            min: None,
            sub_block: None,
        }
    }

    /// Fits the grid of one group to its `values` with per-value weights (`H_ii` of the
    /// inputs; pairs beyond the shorter slice are ignored by the weighted error).
    ///
    /// With [`GridFit::Weighted`] on a GGUF spec, a small search (llama.cpp's imatrix
    /// path: `make_qx_quants` for the `_0` types, a `(d, m)` least-squares search like
    /// `make_qkx3_quants` for Q4_1 / Q5_1, plus both signs of `d` and three least-squares
    /// refits of the best codes) returns the candidate with the smallest
    /// `sum_i w_i (x_i - value(code(x_i)))^2`, evaluated exactly as the quantizers round;
    /// the min-max grid of [`GridSpec::fit`] is the first candidate and is only replaced
    /// by a strictly better one, so the weighted error is never above min-max's. Every
    /// other spec: [`GridSpec::fit`] on `values`.
    pub fn fit_weighted(&self, values: &[f32], weights: &[f32]) -> Grid {
        match self.ggml {
            Some(ty) if ty.is_k_quant() => {
                let mut grid = [Grid::default()];
                self.fit_span_grids(values, weights, &mut grid);
                grid[0]
            }
            Some(ty) if self.fit == GridFit::Weighted => ggml::fit_weighted(ty, values, weights),
            _ => self.fit(values.iter().copied()),
        }
    }
}

/// `scale` rounded to the nearest f16 value (ties to even), kept within the positive
/// finite f16 range so that the grid stays usable.
fn f16_scale(scale: f32) -> f32 {
    let rounded = half::f16::from_f32(scale).to_f32();
    rounded.clamp(half::f16::from_bits(1).to_f32(), half::f16::MAX.to_f32())
}

/// One fitted grid: `x ~ scale * (q - zero)` with integer code `q` in `0..=maxq`; or,
/// for the GGUF formats with a minimum (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K),
/// `x ~ q * scale + min`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Grid {
    /// Step between grid points, an f16 value (positive, except for GGUF grids: Q4_0 /
    /// Q5_0 `d` is negative when the block's largest magnitude is a positive value, and
    /// any GGUF `d` is 0 for a constant block; a K-quant sub-block's is `d * sc`, the
    /// product of an f16 value and a small integer, exact in f32).
    pub scale: f32,
    /// Integer zero point (GGUF: 8 for Q4_0, 16 for Q5_0, 128 for Q8_0, whose stored
    /// int8 is `code - 128`, 4 for Q3_K, 32 for Q6_K; 0 with a minimum).
    pub zero: u32,
    /// Largest code.
    pub maxq: u32,
    /// The block minimum `m` of Q4_1 / Q5_1 (an f16 value), `-dmin * m` of a Q2_K / Q4_K /
    /// Q5_K sub-block; `None` for every other grid.
    pub min: Option<f32>,
    /// What a K-quant file stores for this sub-block; `None` for every other grid.
    pub sub_block: Option<SubBlockScales>,
}

/// What a K-quant file stores for one sub-block's grid: the super-block's f16 scales and
/// the sub-block's quantized scale and minimum. The grid is `scale = d * sc`,
/// `min = -(dmin * m)` (Q2_K, Q4_K, Q5_K), with `sc` the stored scale code read as the
/// format does (Q3_K: `code - 32`; Q6_K: the code's bits as an int8).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SubBlockScales {
    /// The super-block scale `d`, an f16 value.
    pub d: f32,
    /// The super-block scale of the minimums `dmin`, an f16 value (0 without minimums).
    pub dmin: f32,
    /// The sub-block's scale code as stored (4 bits Q2_K, 6 bits Q3_K / Q4_K / Q5_K, 8
    /// bits Q6_K).
    pub scale: u8,
    /// The sub-block's minimum code as stored (0 without minimums).
    pub min: u8,
}

impl Grid {
    /// The code `clamp(round(x / scale) + zero, 0, maxq)`, rounding ties to even; with a
    /// minimum `m`, `clamp(round((x - m) / scale), 0, maxq)` (0 if `scale` is 0).
    #[inline]
    pub fn code(&self, x: f32) -> u32 {
        match self.min {
            None => (round_ties_even(x / self.scale) + self.zero as f32)
                .clamp(0.0, self.maxq as f32) as u32,
            Some(_) if self.scale == 0.0 => 0,
            Some(m) => round_ties_even((x - m) / self.scale).clamp(0.0, self.maxq as f32) as u32,
        }
    }

    /// The value of a code, `scale * (q - zero)`; with a minimum `m`, `q * scale + m`.
    ///
    /// These are ggml's operations and order: `dequantize_row_q4_0` computes
    /// `(float)(q - 8) * d` (one product, of the same operands), `dequantize_row_q4_1`
    /// `x0*d + m`. A C compiler may contract the latter into `fmaf(x0, d, m)` (clang by
    /// default, GCC with FMA targets), numpy's gguf reader computes `d * q + m` as a
    /// product then a sum; here it is the product then the sum, and all three agree bit
    /// for bit: `d` is an f16 value (11 significant bits) and `q < 2^5`, so `q * d` has at
    /// most 16 significant bits and is exact in f32 (f16 subnormals included), and an FMA
    /// rounds the same exact sum once. K-quant sub-blocks likewise: `dequantize_row_q*_K`
    /// computes `dl * q - ml` or `dl * (q - zero)` with `dl = d * sc`, `ml = dmin * m`;
    /// `d * sc` and `dmin * m` are exact (at most 11 + 8 significant bits) and so is the
    /// product with the code (at most 24 bits: Q6_K's `|sc| <= 128`, `|q - 32| <= 32`),
    /// so only the final subtraction rounds, here as there.
    #[inline]
    pub fn value(&self, q: u32) -> f32 {
        match self.min {
            None => self.scale * (q as f32 - self.zero as f32),
            Some(m) => q as f32 * self.scale + m,
        }
    }

    /// The grid point the reference quantizer maps `x` to, `value(code(x))`.
    #[inline]
    pub fn round(&self, x: f32) -> f32 {
        self.value(self.code(x))
    }

    /// [`Self::round`] of each `x` into `out` (pairs up to the shorter), bit for bit, in a
    /// branch-free loop the compiler vectorises: the clamped code stays a float (an integer
    /// in `0..=maxq`, or NaN, which `f32::max` sends to 0 as the cast in [`Self::code`]
    /// does; `+ 0.0` turns a `-0.0` code into the cast's `+0.0`).
    pub fn round_into(&self, x: &[f32], out: &mut [f32]) {
        let maxq = self.maxq as f32;
        match self.min {
            None => {
                let zero = self.zero as f32;
                for (o, &x) in out.iter_mut().zip(x) {
                    let q = (round_ties_even(x / self.scale) + zero).max(0.0).min(maxq) + 0.0;
                    *o = self.scale * (q - zero);
                }
            }
            Some(_) if self.scale == 0.0 => {
                out.iter_mut().zip(x).for_each(|(o, _)| *o = self.value(0))
            }
            Some(m) => {
                for (o, &x) in out.iter_mut().zip(x) {
                    let q = round_ties_even((x - m) / self.scale).max(0.0).min(maxq) + 0.0;
                    *o = q * self.scale + m;
                }
            }
        }
    }
}

/// `x.round_ties_even()` without a libm call on targets lacking a rounding instruction:
/// for `|x| < 2^22`, adding and subtracting `1.5 * 2^23` rounds to an integer in the
/// default (nearest, ties to even) mode; larger magnitudes are integers or half-integers
/// far outside every code range, where the clamp that follows decides anyway. NaN stays NaN.
#[inline]
pub(crate) fn round_ties_even(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    if x.abs() < 4_194_304.0 {
        (x + SHIFT) - SHIFT
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::{Grid, round_ties_even};
    use proptest::prelude::*;

    proptest! {
        /// `round_into` is `round`, bit for bit, on every kind of grid (with and without a
        /// minimum, a zero scale) and on values that include zeros of both signs, NaN,
        /// infinities and values far outside the grid.
        #[test]
        fn round_into_is_round(
            scale in prop_oneof![Just(0.0f32), Just(-0.0f32), -2.0f32..2.0, 1e-30f32..1e-20],
            maxq in 1u32..=255,
            zero_frac in 0.0f64..=1.0,
            min in proptest::option::of(prop_oneof![Just(-0.0f32), Just(0.0f32), -3.0f32..1.0]),
            x in proptest::collection::vec(
                prop_oneof![
                    Just(0.0f32), Just(-0.0f32), Just(f32::NAN), Just(f32::INFINITY),
                    Just(f32::NEG_INFINITY), -4.0f32..4.0, -1e30f32..1e30,
                ],
                0..70,
            ),
        ) {
            let zero = if min.is_some() { 0 } else { (zero_frac * maxq as f64) as u32 };
            let grid = Grid { scale, zero, maxq, min, sub_block: None };
            let mut out = vec![0.0f32; x.len()];
            grid.round_into(&x, &mut out);
            for (&x, &o) in x.iter().zip(&out) {
                prop_assert_eq!(o.to_bits(), grid.round(x).to_bits(), "x = {}, grid {:?}", x, grid);
            }
        }
    }

    /// Every f32 of magnitude below 2^22 that is a multiple of 1/4 (so every tie), and a
    /// sweep of bit patterns, round as `f32::round_ties_even`.
    #[test]
    fn matches_std_round_ties_even() {
        for k in -200_000i32..200_000 {
            let x = k as f32 * 0.25;
            assert_eq!(round_ties_even(x), x.round_ties_even(), "{x}");
        }
        for bits in (0..u32::MAX).step_by(65_537) {
            let x = f32::from_bits(bits);
            if x.is_finite() && x.abs() < 4_194_304.0 {
                // -0.0 and 0.0 compare equal, which is all the clamp needs.
                assert_eq!(round_ties_even(x), x.round_ties_even(), "{x}");
            }
        }
    }
}
