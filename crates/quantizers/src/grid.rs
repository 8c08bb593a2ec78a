//! Uniform quantization grids, exactly as in the GPTQ / MagR reference quantizer.

use crate::QuantError;

/// The settings that define a grid family: bit width, grouping, symmetry, shrink factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSpec {
    bits: u32,
    group_size: Option<usize>,
    symmetric: bool,
    beta: f32,
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
        })
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

    /// Inputs per group for a layer with `inputs` inputs: the group size, or `inputs`
    /// per channel. `inputs / group_rows` is the number of groups.
    ///
    /// # Errors
    /// No inputs, or a group size that does not divide `inputs`.
    pub fn group_rows(&self, inputs: usize) -> Result<usize, QuantError> {
        match self.group_size {
            _ if inputs == 0 => Err(QuantError::Parameter(
                "a layer needs at least one input".into(),
            )),
            None => Ok(inputs),
            Some(g) if inputs.is_multiple_of(g) => Ok(g),
            Some(g) => Err(QuantError::GroupSize {
                group_size: g,
                inputs,
            }),
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
    pub fn fit(&self, values: impl IntoIterator<Item = f32>) -> Grid {
        let (lo, hi) = values
            .into_iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), x| (lo.min(x), hi.max(x)));
        self.fit_range(lo, hi)
    }

    /// [`GridSpec::fit`] for weights whose minimum is `lo` and maximum `hi`.
    pub fn fit_range(&self, lo: f32, hi: f32) -> Grid {
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
        Grid { scale, zero, maxq }
    }
}

/// `scale` rounded to the nearest f16 value (ties to even), kept within the positive
/// finite f16 range so that the grid stays usable.
fn f16_scale(scale: f32) -> f32 {
    let rounded = half::f16::from_f32(scale).to_f32();
    rounded.clamp(half::f16::from_bits(1).to_f32(), half::f16::MAX.to_f32())
}

/// One fitted grid: `x ~ scale * (q - zero)` with integer code `q` in `0..=maxq`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Step between grid points (positive, an f16 value).
    pub scale: f32,
    /// Integer zero point.
    pub zero: u32,
    /// Largest code.
    pub maxq: u32,
}

impl Grid {
    /// The code `clamp(round(x / scale) + zero, 0, maxq)`, rounding ties to even.
    #[inline]
    pub fn code(&self, x: f32) -> u32 {
        (round_ties_even(x / self.scale) + self.zero as f32).clamp(0.0, self.maxq as f32) as u32
    }

    /// The value of a code, `scale * (q - zero)`.
    #[inline]
    pub fn value(&self, q: u32) -> f32 {
        self.scale * (q as f32 - self.zero as f32)
    }

    /// The grid point the reference quantizer maps `x` to, `value(code(x))`.
    #[inline]
    pub fn round(&self, x: f32) -> f32 {
        self.value(self.code(x))
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
    use super::round_ties_even;

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
