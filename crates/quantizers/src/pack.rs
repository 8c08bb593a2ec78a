//! Integer packing in the GPTQ checkpoint layout, as AutoGPTQ's `QuantLinear.pack`
//! writes it and AutoGPTQ, GPTQModel, transformers, vLLM and exllama read it, with the
//! zero points in the "v1" or the "v2" convention ([`ZeroFormat`]).
//!
//! Every packed tensor is a set of little-endian bit streams cut into 32-bit words: code
//! `k` of a stream occupies stream bits `bits*k .. bits*(k+1)`, and stream bit `b` is bit
//! `b % 32` of word `b / 32`. At 2, 4 and 8 bits a code never straddles a word. At 3 bits
//! 32 codes fill 3 words and codes 10 and 21 straddle: word 0 holds codes 0-9 at bits
//! `3k` and the low two bits of code 10 at bits 30-31; word 1 holds code 10's high bit at
//! bit 0, codes 11-20 at bits `3(k-11)+1` and code 21's low bit at bit 31; word 2 holds
//! code 21's high two bits at bits 0-1 and codes 22-31 at bits `3(k-22)+2`. That is
//! exactly AutoGPTQ's hand-written 3-bit `pack` and the shift table of its unpacking.
//!
//! Tensors (row-major), for `in` inputs, `out` outputs and `G` groups:
//! - `qweight` `[ceil(in*bits/32), out]`: one stream per output, along the inputs;
//! - `qzeros` `[G, ceil(out*bits/32)]`: one stream per group, along the outputs, holding
//!   `zero - 1` (v1; loaders add the one back), so zero points `1..=2^bits` only, or
//!   `zero` itself (v2, `checkpoint_format: "gptq_v2"`), so `0..2^bits` only;
//! - `scales` `[G, out]` (f32 here; a checkpoint stores f16, converted by the writer);
//! - `g_idx` `[in]`.
//!
//! Sizes: real layers have `in` and `out` multiples of 32, where the shapes are the
//! standard `in*bits/32` and `out*bits/32`. Other sizes are packed too, the last word of
//! each stream padded with zero bits, so that every layer round-trips; GPTQ kernels do not
//! accept such tensors.

use faer::Mat;

use crate::error::check_length;
use crate::{QuantError, QuantizedLinear};

/// Words of a stream of `count` codes of `bits` bits.
fn stream_words(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(32)
}

fn check_bits(bits: u32) -> Result<(), QuantError> {
    if [2, 3, 4, 8].contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::Bits(bits))
    }
}

/// Appends the stream of `codes` (each `< 2^bits`) to `words`.
fn pack_stream(codes: impl IntoIterator<Item = u32>, bits: u32, words: &mut Vec<u32>) {
    let mut acc = 0u64;
    let mut filled = 0u32;
    for code in codes {
        acc |= (code as u64) << filled;
        filled += bits;
        if filled >= 32 {
            words.push(acc as u32);
            acc >>= 32;
            filled -= 32;
        }
    }
    if filled > 0 {
        words.push(acc as u32);
    }
}

/// Code `k` of a stream.
fn stream_code(words: &[u32], bits: u32, k: usize) -> u32 {
    let bit = k * bits as usize;
    let (w, offset) = (bit / 32, (bit % 32) as u32);
    let lo = words[w] as u64;
    let hi = words.get(w + 1).copied().unwrap_or(0) as u64;
    (((hi << 32) | lo) >> offset) as u32 & ((1u32 << bits) - 1)
}

/// Packs codes laid out as `W` (in x out column-major, `codes[j * inputs + i]`) into
/// `qweight`, `[ceil(inputs*bits/32), outputs]` row-major, as `i32` bit patterns.
///
/// # Errors
/// Bits outside {2, 3, 4, 8}; `codes.len() != inputs * outputs`; a code `>= 2^bits`.
pub fn pack_qweight(
    codes: &[u8],
    inputs: usize,
    outputs: usize,
    bits: u32,
) -> Result<Vec<i32>, QuantError> {
    check_bits(bits)?;
    check_length("codes", codes.len(), inputs * outputs)?;
    if let Some((index, &code)) = codes
        .iter()
        .enumerate()
        .find(|(_, c)| **c as u32 >> bits != 0)
    {
        return Err(QuantError::Code {
            index,
            code: code as u32,
            bits,
        });
    }
    let rows = stream_words(inputs, bits);
    let mut qweight = vec![0i32; rows * outputs];
    let mut words = Vec::with_capacity(rows);
    for j in 0..outputs {
        words.clear();
        let column = &codes[j * inputs..(j + 1) * inputs];
        pack_stream(column.iter().map(|&c| c as u32), bits, &mut words);
        for (r, &word) in words.iter().enumerate() {
            qweight[r * outputs + j] = word as i32;
        }
    }
    Ok(qweight)
}

/// Inverse of [`pack_qweight`]: the codes, `[j * inputs + i]`.
///
/// # Errors
/// Bits outside {2, 3, 4, 8}; `qweight.len() != ceil(inputs*bits/32) * outputs`.
pub fn unpack_qweight(
    qweight: &[i32],
    inputs: usize,
    outputs: usize,
    bits: u32,
) -> Result<Vec<u8>, QuantError> {
    check_bits(bits)?;
    let rows = stream_words(inputs, bits);
    check_length("qweight", qweight.len(), rows * outputs)?;
    let mut codes = Vec::with_capacity(inputs * outputs);
    let mut words = Vec::with_capacity(rows);
    for j in 0..outputs {
        words.clear();
        words.extend((0..rows).map(|r| qweight[r * outputs + j] as u32));
        codes.extend((0..inputs).map(|i| stream_code(&words, bits, i) as u8));
    }
    Ok(codes)
}

/// How `qzeros` stores a zero point `z` in `bits` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZeroFormat {
    /// `z - 1` (the original GPTQ layout, read by every loader): `z` in `1..=2^bits`.
    V1,
    /// `z` itself (GPTQModel's `gptq_v2`): `z` in `0..2^bits`.
    V2,
}

impl ZeroFormat {
    /// Whether zero point `zero` can be stored at `bits` bits.
    pub fn holds(self, zero: u32, bits: u32) -> bool {
        match self {
            ZeroFormat::V1 => (1..=1 << bits).contains(&zero),
            ZeroFormat::V2 => zero < 1 << bits,
        }
    }

    /// The stored value of `zero` (which [`ZeroFormat::holds`]).
    fn stored(self, zero: u32) -> u32 {
        match self {
            ZeroFormat::V1 => zero - 1,
            ZeroFormat::V2 => zero,
        }
    }

    /// The zero point a loader reads from a stored value.
    fn loaded(self, stored: u32) -> u32 {
        match self {
            ZeroFormat::V1 => stored + 1,
            ZeroFormat::V2 => stored,
        }
    }

    /// The `checkpoint_format` of `quantization_config`: `"gptq"` or `"gptq_v2"`.
    pub fn checkpoint_format(self) -> &'static str {
        match self {
            ZeroFormat::V1 => "gptq",
            ZeroFormat::V2 => "gptq_v2",
        }
    }

    /// The format of a checkpoint holding `zeros` at `bits` bits: `preferred` when it
    /// holds them all, else the other one when it does, else `None` (zero points both 0
    /// and `2^bits`, which no GPTQ layout stores together).
    pub fn choose(
        zeros: impl IntoIterator<Item = u32> + Clone,
        bits: u32,
        preferred: ZeroFormat,
    ) -> Option<Self> {
        let other = match preferred {
            ZeroFormat::V1 => ZeroFormat::V2,
            ZeroFormat::V2 => ZeroFormat::V1,
        };
        [preferred, other]
            .into_iter()
            .find(|f| zeros.clone().into_iter().all(|z| f.holds(z, bits)))
    }
}

/// Packs zero points `[groups, outputs]` row-major into `qzeros`,
/// `[groups, ceil(outputs*bits/32)]`, in `format`.
///
/// # Errors
/// Bits outside {2, 3, 4, 8}; `zeros.len() != groups * outputs`; a zero point `format`
/// cannot store ([`QuantError::ZeroPoint`]).
pub fn pack_qzeros(
    zeros: &[u32],
    groups: usize,
    outputs: usize,
    bits: u32,
    format: ZeroFormat,
) -> Result<Vec<i32>, QuantError> {
    check_bits(bits)?;
    check_length("zero points", zeros.len(), groups * outputs)?;
    if let Some(index) = zeros.iter().position(|&z| !format.holds(z, bits)) {
        return Err(QuantError::ZeroPoint {
            group: index / outputs,
            output: index % outputs,
            zero: zeros[index],
            bits,
            format,
        });
    }
    let mut words = Vec::with_capacity(groups * stream_words(outputs, bits));
    for row in zeros.chunks(outputs.max(1)) {
        pack_stream(row.iter().map(|&z| format.stored(z)), bits, &mut words);
    }
    Ok(words.into_iter().map(|w| w as i32).collect())
}

/// Inverse of [`pack_qzeros`]: the zero points `[groups, outputs]` a loader of `format`
/// computes.
///
/// # Errors
/// Bits outside {2, 3, 4, 8}; `qzeros.len() != groups * ceil(outputs*bits/32)`.
pub fn unpack_qzeros(
    qzeros: &[i32],
    groups: usize,
    outputs: usize,
    bits: u32,
    format: ZeroFormat,
) -> Result<Vec<u32>, QuantError> {
    check_bits(bits)?;
    let cols = stream_words(outputs, bits);
    check_length("qzeros", qzeros.len(), groups * cols)?;
    let mut zeros = Vec::with_capacity(groups * outputs);
    for g in 0..groups {
        let words: Vec<u32> = qzeros[g * cols..(g + 1) * cols]
            .iter()
            .map(|&w| w as u32)
            .collect();
        zeros.extend((0..outputs).map(|j| format.loaded(stream_code(&words, bits, j))));
    }
    Ok(zeros)
}

/// The four tensors of one GPTQ checkpoint layer (row-major, shapes in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqTensors {
    /// Bit width.
    pub bits: u32,
    /// Inputs.
    pub inputs: usize,
    /// Outputs.
    pub outputs: usize,
    /// Groups (1 per channel).
    pub groups: usize,
    /// Packed codes, `[ceil(inputs*bits/32), outputs]`.
    pub qweight: Vec<i32>,
    /// How `qzeros` stores the zero points.
    pub format: ZeroFormat,
    /// Packed zero points, `[groups, ceil(outputs*bits/32)]`.
    pub qzeros: Vec<i32>,
    /// Scales, `[groups, outputs]`.
    pub scales: Vec<f32>,
    /// Group of each input, `[inputs]`.
    pub g_idx: Vec<i32>,
}

impl GptqTensors {
    /// Shape of `qweight`.
    pub fn qweight_shape(&self) -> [usize; 2] {
        [stream_words(self.inputs, self.bits), self.outputs]
    }
    /// Shape of `qzeros`.
    pub fn qzeros_shape(&self) -> [usize; 2] {
        [self.groups, stream_words(self.outputs, self.bits)]
    }
    /// Shape of `scales`.
    pub fn scales_shape(&self) -> [usize; 2] {
        [self.groups, self.outputs]
    }
}

/// Packs a quantized layer in the GPTQ layout with zero points in `format` (see
/// [`ZeroFormat::choose`] for a whole model).
///
/// # Errors
/// A zero point `format` cannot store ([`QuantError::ZeroPoint`]). Asymmetric grids have
/// zero point 0 (not in v1) for a group whose weights are all `>= 0`, and `2^bits` (not
/// in v2) for a group of all-`<= 0` weights with `beta < 1`. GGUF grids with a minimum
/// (`q * d + m`, which the GPTQ layout cannot hold) and K-quant grids (scales `d * sc`,
/// not f16 values in general) are a [`QuantError::Parameter`].
pub fn pack_gptq(q: &QuantizedLinear, format: ZeroFormat) -> Result<GptqTensors, QuantError> {
    let (n, m, groups, bits) = (q.inputs(), q.outputs(), q.groups(), q.spec().bits());
    if let Some(ty) = q
        .spec()
        .ggml_type()
        .filter(|ty| ty.has_min() || ty.is_k_quant())
    {
        return Err(QuantError::Parameter(format!(
            "the GPTQ layout cannot hold GGUF {ty} grids (a minimum, or K-quant sub-block scales); pack them with pack_ggml"
        )));
    }
    let zeros: Vec<u32> = q.grids().iter().map(|g| g.zero).collect();
    Ok(GptqTensors {
        bits,
        inputs: n,
        outputs: m,
        groups,
        qweight: pack_qweight(q.codes(), n, m, bits)?,
        format,
        qzeros: pack_qzeros(&zeros, groups, m, bits, format)?,
        scales: q.grids().iter().map(|g| g.scale).collect(),
        g_idx: q.g_idx().iter().map(|&g| g as i32).collect(),
    })
}

impl GptqTensors {
    /// The zero points `[groups, outputs]`.
    ///
    /// # Errors
    /// `qzeros` of the wrong length.
    pub fn zero_points(&self) -> Result<Vec<u32>, QuantError> {
        unpack_qzeros(
            &self.qzeros,
            self.groups,
            self.outputs,
            self.bits,
            self.format,
        )
    }

    /// The same layer with its zero points stored in `format`.
    ///
    /// # Errors
    /// A zero point `format` cannot store.
    pub fn to_format(&self, format: ZeroFormat) -> Result<GptqTensors, QuantError> {
        let zeros = self.zero_points()?;
        Ok(GptqTensors {
            format,
            qzeros: pack_qzeros(&zeros, self.groups, self.outputs, self.bits, format)?,
            ..self.clone()
        })
    }
}

/// The weights (in x out) a loader computes from the tensors:
/// `scales[g, j] * (code - zero)` with `g = g_idx[i]` and the zero point as `t.format`
/// reads it (v1: stored value + 1), in f32.
///
/// # Errors
/// Bits outside {2, 3, 4, 8}; tensor lengths that do not match the shapes; a `g_idx`
/// entry outside `0..groups`.
pub fn dequantize_gptq(t: &GptqTensors) -> Result<Mat<f32>, QuantError> {
    let (n, m) = (t.inputs, t.outputs);
    let codes = unpack_qweight(&t.qweight, n, m, t.bits)?;
    let zeros = t.zero_points()?;
    check_length("scales", t.scales.len(), t.groups * m)?;
    check_length("g_idx", t.g_idx.len(), n)?;
    if let Some((i, &g)) = t
        .g_idx
        .iter()
        .enumerate()
        .find(|(_, g)| !(0..t.groups as i64).contains(&(**g as i64)))
    {
        return Err(QuantError::Parameter(format!(
            "g_idx[{i}] = {g} is outside 0..{}",
            t.groups
        )));
    }
    Ok(Mat::from_fn(n, m, |i, j| {
        let at = t.g_idx[i] as usize * m + j;
        t.scales[at] * (codes[j * n + i] as f32 - zeros[at] as f32)
    }))
}
