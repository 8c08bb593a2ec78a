//! Vectorised pieces for the exponential-heavy loops of an evaluation: the attention
//! softmax, the SwiGLU activation, the cross-entropy of the logits and the divergence
//! of two models' next-token distributions.
//!
//! `exp` is Cephes' single-precision algorithm (range reduction by `ln 2` in two
//! parts, a degree-6 polynomial, the exponent set by bit manipulation; relative
//! error about 2e-7 on `[-87.3, 88.3]`), written without branches so that the loops
//! vectorise. On x86-64 CPUs with AVX2 and FMA (checked at run time) the loops are
//! compiled a second time for them.

const MAGIC_ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const LANES: usize = 8;

/// `e^x` for `x` in `[-87.3, 88.3]`; arguments below (above) are clamped, giving
/// about `1.2e-38` (`2.4e38`).
#[inline(always)]
fn exp(x: f32) -> f32 {
    // max/min rather than clamp: no NaN or ordering checks in the vector loop.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.336_54).min(88.376_26);
    // t = 1.5 * 2^23 + n exactly: n = round(x / ln 2) sits in the low mantissa bits,
    // which keeps the exponent arithmetic in (vectorisable) integer lanes.
    let t = x * LOG2E + MAGIC_ROUND;
    let n = t - MAGIC_ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes' 5.0000001201e-1 rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    let n_bits = t.to_bits().wrapping_sub(MAGIC_ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Largest element (`-inf` for an empty slice).
#[inline(always)]
fn max_portable(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[f32; LANES] = c.try_into().unwrap_or(&[f32::NEG_INFINITY; LANES]);
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    tail.iter()
        .chain(&acc)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum with `LANES` independent accumulators.
#[inline(always)]
fn sum_portable(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[f32; LANES] = c.try_into().unwrap_or(&[0.0; LANES]);
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn softmax_in_place_portable(x: &mut [f32]) {
    let max = max_portable(x);
    x.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum_portable(x);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Per row of logits stored by vocabulary entry (entry `j` of row `r` at
/// `z[j * rows + r]`, `rows = max.len()`), `max[r]` and `sum[r] = sum_j e^{z - max}`:
/// a pass for the maxima, a pass for the sums, each over contiguous rows. The sums are
/// f64: a vocabulary-long f32 sum drifts (rounding biased by the growing total) by
/// about 1e-5, visible in a perplexity.
#[inline(always)]
fn max_and_exp_sum_by_vocab_portable(z: &[f32], max: &mut [f32], sum: &mut [f64]) {
    let rows = max.len();
    max.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    for col in z.chunks_exact(rows) {
        for (m, &v) in max.iter_mut().zip(col) {
            *m = m.max(v);
        }
    }
    for col in z.chunks_exact(rows) {
        for ((s, &m), &v) in sum.iter_mut().zip(&*max).zip(col) {
            *s += f64::from(exp(v - m));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_in_place_avx2(x: &mut [f32]) {
    softmax_in_place_portable(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn max_and_exp_sum_by_vocab_avx2(z: &[f32], max: &mut [f32], sum: &mut [f64]) {
    max_and_exp_sum_by_vocab_portable(z, max, sum)
}

/// Elements per block of the f32 lane sums of [`divergence_row_portable`], each block's
/// sums then added in f64.
const DIVERGENCE_BLOCK: usize = 256;

/// For logit rows `z` (model) and `z_ref` (reference) of equal length:
/// `(ln sum e^z, ln sum e^z', KL(softmax(z') || softmax(z)))`, with
/// `KL = sum_v p_v (z'_v - z_v) + lse - lse'`, `p = softmax(z')`.
#[inline(always)]
fn divergence_row_portable(z: &[f32], z_ref: &[f32]) -> (f64, f64, f64) {
    let (max, max_ref) = (max_portable(z), max_portable(z_ref));
    let (mut s, mut s_ref, mut t) = (0.0f64, 0.0f64, 0.0f64);
    for (b, b_ref) in z
        .chunks(DIVERGENCE_BLOCK)
        .zip(z_ref.chunks(DIVERGENCE_BLOCK))
    {
        let (mut a, mut a_ref, mut a_t) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        let (c, c_ref) = (b.chunks_exact(LANES), b_ref.chunks_exact(LANES));
        let tail = c.remainder().iter().zip(c_ref.remainder());
        for (c, c_ref) in c.zip(c_ref) {
            for i in 0..LANES {
                let e_ref = exp(c_ref[i] - max_ref);
                a[i] += exp(c[i] - max);
                a_ref[i] += e_ref;
                a_t[i] += e_ref * (c_ref[i] - c[i]);
            }
        }
        for (&v, &v_ref) in tail {
            let e_ref = exp(v_ref - max_ref);
            s += f64::from(exp(v - max));
            s_ref += f64::from(e_ref);
            t += f64::from(e_ref * (v_ref - v));
        }
        s += a.iter().map(|&v| f64::from(v)).sum::<f64>();
        s_ref += a_ref.iter().map(|&v| f64::from(v)).sum::<f64>();
        t += a_t.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    let lse = f64::from(max) + s.ln();
    let lse_ref = f64::from(max_ref) + s_ref.ln();
    (lse, lse_ref, t / s_ref + lse - lse_ref)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn divergence_row_avx2(z: &[f32], z_ref: &[f32]) -> (f64, f64, f64) {
    divergence_row_portable(z, z_ref)
}

/// `out[i] = silu(gate[i]) * up[i]` with `silu(x) = x / (1 + e^{-x})`.
#[inline(always)]
fn silu_mul_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_portable(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `x = softmax(x)` (non-empty, finite `x`).
pub(crate) fn softmax_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, as checked just above.
        return unsafe { softmax_in_place_avx2(x) };
    }
    softmax_in_place_portable(x)
}

/// For logit rows `z` (model) and `z_ref` (reference) of equal length, finite:
/// `(logsumexp z, logsumexp z', KL(softmax(z') || softmax(z)))` (sums in f64 over
/// blocks of f32 lanes).
pub(crate) fn divergence_row(z: &[f32], z_ref: &[f32]) -> (f64, f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, as checked just above.
        return unsafe { divergence_row_avx2(z, z_ref) };
    }
    divergence_row_portable(z, z_ref)
}

/// `out = silu(gate) * up` elementwise, the SwiGLU activation (equal lengths).
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, as checked just above.
        return unsafe { silu_mul_avx2(gate, up, out) };
    }
    silu_mul_portable(gate, up, out)
}

/// For rows of logits stored by vocabulary entry (`z[j * rows + r]`,
/// `rows = max.len() = sum.len()`, finite entries): `max[r] = max_j z` and
/// `sum[r] = sum_j e^{z - max[r]}`, so that `logsumexp = max + ln sum`.
pub(crate) fn max_and_exp_sum_by_vocab(z: &[f32], max: &mut [f32], sum: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, as checked just above.
        return unsafe { max_and_exp_sum_by_vocab_avx2(z, max, sum) };
    }
    max_and_exp_sum_by_vocab_portable(z, max, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((f64::from(exp(x)) - f64::from(x).exp()) / f64::from(x).exp()).abs();
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert!(exp(-1000.0) < 2e-38 && exp(-1000.0) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    proptest::proptest! {
        /// The row divergence against f64 softmaxes, on rows longer than a block with a
        /// ragged tail, logits up to +-40 and a reference near or far from the model.
        #[test]
        fn divergence_row_matches_f64(
            z in proptest::collection::vec(-40.0f32..40.0, 1..700),
            noise in proptest::collection::vec(-1.0f32..1.0, 700),
            scale in proptest::prop_oneof![proptest::strategy::Just(0.0f32), 0.001f32..0.05, 0.5f32..8.0],
        ) {
            let z_ref: Vec<f32> = z.iter().zip(&noise).map(|(a, n)| a + scale * n).collect();
            let lse = |v: &[f32]| {
                let m = v.iter().map(|&x| f64::from(x)).fold(f64::NEG_INFINITY, f64::max);
                m + v.iter().map(|&x| (f64::from(x) - m).exp()).sum::<f64>().ln()
            };
            let (l, l_ref) = (lse(&z), lse(&z_ref));
            let kl: f64 = z.iter().zip(&z_ref).map(|(&a, &b)| {
                let lp = f64::from(b) - l_ref;
                lp.exp() * (lp - (f64::from(a) - l))
            }).sum();
            let (got, got_ref, got_kl) = divergence_row(&z, &z_ref);
            proptest::prop_assert!((got - l).abs() <= 1e-6 * l.abs().max(1.0), "{got} vs {l}");
            proptest::prop_assert!((got_ref - l_ref).abs() <= 1e-6 * l_ref.abs().max(1.0));
            // KL is formed from terms of the size of the logit differences, each with
            // f32's exp: 2e-6 absolute (far below the 1e-3 nats of interest) plus 1e-4
            // relative.
            proptest::prop_assert!((got_kl - kl).abs() <= 2e-6 + 1e-4 * kl, "KL {got_kl} vs {kl}");
            if scale == 0.0 {
                proptest::prop_assert_eq!(got_kl, 0.0);
            }
        }
    }

    #[test]
    fn silu_mul_matches_f64() {
        let gate: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let up: Vec<f32> = (0..1001)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.5)
            .collect();
        let mut out = vec![0.0; gate.len()];
        silu_mul(&gate, &up, &mut out);
        for ((&o, &g), &u) in out.iter().zip(&gate).zip(&up) {
            let want = g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64;
            assert!(
                (o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-7,
                "{g}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn softmax_and_log_sum_exp_match_f64() {
        for n in [1usize, 7, 8, 9, 100, 1001] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let mut out = x.clone();
            let mut out_portable = x.clone();
            softmax_in_place(&mut out);
            softmax_in_place_portable(&mut out_portable);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            for ((&o, &p), &v) in out.iter().zip(&out_portable).zip(&x) {
                let want = (v as f64 - max).exp() / z;
                assert!(
                    (o as f64 - want).abs() <= 1e-6 * want + 1e-12,
                    "n {n}: {o} vs {want}"
                );
                assert!((p as f64 - want).abs() <= 1e-6 * want + 1e-12);
            }
            // The same values as one row stored by vocabulary entry, beside a second row.
            let by_vocab: Vec<f32> = x.iter().flat_map(|&v| [v, -v]).collect();
            let (mut m, mut s) = ([0.0f32; 2], [0.0f64; 2]);
            max_and_exp_sum_by_vocab(&by_vocab, &mut m, &mut s);
            let lse = [m[0] as f64 + s[0].ln(), m[1] as f64 + s[1].ln()];
            assert!(
                (lse[0] - (max + z.ln())).abs() < 1e-5,
                "n {n}: {} vs {}",
                lse[0],
                max + z.ln()
            );
            let neg_max = x.iter().map(|&v| -v).fold(f32::NEG_INFINITY, f32::max) as f64;
            let neg: f64 = x.iter().map(|&v| (-v as f64 - neg_max).exp()).sum();
            assert!((lse[1] - (neg_max + neg.ln())).abs() < 1e-5);
        }
    }
}
