//! GPTQ packing: the AutoGPTQ bit layout, round trips, and the loader's dequantization.

use faer::Par;
use proptest::prelude::*;
use quantizers::{
    GridSpec, Optq, QuantError, Quantizer, ZeroFormat, dequantize_gptq, pack_gptq, pack_qweight,
    pack_qzeros, unpack_qweight, unpack_qzeros,
};

use crate::{correlated_hessian, problem, random_weights};

fn bits_strategy() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![2u32, 3, 4, 8])
}

/// Bit `b` of the little-endian stream of 32-bit words (naive reader).
fn stream_bit(words: &[u32], b: usize) -> u32 {
    (words[b / 32] >> (b % 32)) & 1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `qweight` holds code `i` of output `j` at stream bits `bits*i ..` of column `j`,
    /// read bit by bit here; unpacking gives the codes back. Any shape, padded streams.
    #[test]
    fn qweight_layout_and_round_trip(
        bits in bits_strategy(),
        inputs in 1usize..70,
        outputs in 1usize..6,
        seed in any::<u64>(),
    ) {
        let mask = (1u64 << bits) - 1;
        let codes: Vec<u8> = (0..inputs * outputs)
            .map(|t| ((seed.wrapping_mul(t as u64 + 1).rotate_left(17) ^ t as u64) & mask) as u8)
            .collect();
        let qweight = pack_qweight(&codes, inputs, outputs, bits).unwrap();
        let rows = (inputs * bits as usize).div_ceil(32);
        prop_assert_eq!(qweight.len(), rows * outputs);
        for j in 0..outputs {
            let column: Vec<u32> = (0..rows).map(|r| qweight[r * outputs + j] as u32).collect();
            for i in 0..inputs {
                let code: u32 = (0..bits as usize)
                    .map(|b| stream_bit(&column, bits as usize * i + b) << b)
                    .sum();
                prop_assert_eq!(code, codes[j * inputs + i] as u32);
            }
            // Padding bits are zero.
            for b in inputs * bits as usize..rows * 32 {
                prop_assert_eq!(stream_bit(&column, b), 0);
            }
        }
        prop_assert_eq!(unpack_qweight(&qweight, inputs, outputs, bits).unwrap(), codes);
    }

    /// `qzeros` stores `zero - 1` (v1) or `zero` (v2) along the outputs; unpacking gives
    /// the zero points back.
    #[test]
    fn qzeros_round_trip(
        bits in bits_strategy(),
        groups in 1usize..5,
        outputs in 1usize..70,
        seed in any::<u64>(),
        v2 in any::<bool>(),
    ) {
        let (format, offset) = if v2 { (ZeroFormat::V2, 0) } else { (ZeroFormat::V1, 1) };
        let zeros: Vec<u32> = (0..groups * outputs)
            .map(|t| offset + (seed.wrapping_add(t as u64 * 0x9e37_79b9) % (1u64 << bits)) as u32)
            .collect();
        let qzeros = pack_qzeros(&zeros, groups, outputs, bits, format).unwrap();
        let cols = (outputs * bits as usize).div_ceil(32);
        prop_assert_eq!(qzeros.len(), groups * cols);
        for g in 0..groups {
            let row: Vec<u32> = qzeros[g * cols..(g + 1) * cols].iter().map(|&w| w as u32).collect();
            for j in 0..outputs {
                let stored: u32 = (0..bits as usize)
                    .map(|b| stream_bit(&row, bits as usize * j + b) << b)
                    .sum();
                prop_assert_eq!(stored + offset, zeros[g * outputs + j]);
            }
        }
        prop_assert_eq!(unpack_qzeros(&qzeros, groups, outputs, bits, format).unwrap(), zeros);
    }

    /// A quantized layer packed and dequantized as a loader does gives back exactly its
    /// dequantized weights, for every width, groups (a short last group too), act-order, odd output counts and
    /// both zero layouts; the only refusal is a zero point the layout cannot store, and
    /// `ZeroFormat::choose` finds a layout whenever one holds every zero point.
    #[test]
    fn layer_round_trip(
        seed in any::<u64>(),
        bits in bits_strategy(),
        n_groups in 1usize..4,
        m in 1usize..40,
        act_order in any::<bool>(),
        symmetric in any::<bool>(),
        v2 in any::<bool>(),
        short in 0usize..5,
    ) {
        // The last group of 8 is `short` inputs shorter.
        let n = 8 * n_groups - short;
        let w = random_weights(n, m, seed);
        let h = correlated_hessian(n, 64, seed ^ 1);
        let spec = GridSpec::new(bits, Some(8), symmetric, 0.95).unwrap();
        let q = Optq { act_order, par: Par::Seq, ..Optq::new(spec) }.quantize(&problem(&w, &h)).unwrap();
        let format = if v2 { ZeroFormat::V2 } else { ZeroFormat::V1 };
        let storable = |z: u32| if v2 { z < 1 << bits } else { (1..=1u32 << bits).contains(&z) };
        let zeros = q.grids().iter().map(|g| g.zero);
        let chosen = ZeroFormat::choose(zeros.clone(), bits, format);
        if let Some(chosen) = chosen {
            prop_assert!(zeros.clone().all(|z| chosen.holds(z, bits)));
        }
        let t = match pack_gptq(&q, format) {
            Ok(t) => t,
            Err(QuantError::ZeroPoint { group, output, zero, .. }) => {
                prop_assert!(!symmetric && !storable(zero));
                prop_assert_eq!(q.group_grid(group, output).zero, zero);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert!(zeros.clone().all(storable));
        prop_assert!(chosen.is_some());
        prop_assert_eq!(t.qweight_shape(), [(n * bits as usize).div_ceil(32), m]);
        prop_assert_eq!(t.qzeros_shape(), [n_groups, (m * bits as usize).div_ceil(32)]);
        prop_assert_eq!(t.scales_shape(), [n_groups, m]);
        prop_assert_eq!(dequantize_gptq(&t).unwrap(), q.dequantized().to_owned());
        // Converting to the other layout, where it holds the zero points, changes nothing
        // a loader computes.
        let other = if v2 { ZeroFormat::V1 } else { ZeroFormat::V2 };
        if let Ok(t2) = t.to_format(other) {
            prop_assert_eq!(dequantize_gptq(&t2).unwrap(), q.dequantized().to_owned());
        }
    }
}

/// Zero points 0 (all-non-negative group) and `2^bits` (all-non-positive group with
/// beta < 1) each fit one layout only.
#[test]
fn zero_format_choice() {
    let (v1, v2) = (ZeroFormat::V1, ZeroFormat::V2);
    for preferred in [v1, v2] {
        assert_eq!(ZeroFormat::choose([1, 8, 16], 4, preferred), Some(v1));
        assert_eq!(ZeroFormat::choose([0, 8, 15], 4, preferred), Some(v2));
        assert_eq!(ZeroFormat::choose([0, 16], 4, preferred), None);
        assert_eq!(
            ZeroFormat::choose([1, 8, 15], 4, preferred),
            Some(preferred)
        );
    }
    assert_eq!(v1.checkpoint_format(), "gptq");
    assert_eq!(v2.checkpoint_format(), "gptq_v2");
    // v2 stores the zero point itself: zero 5 at 4 bits is the stored nibble 5.
    assert_eq!(pack_qzeros(&[5], 1, 1, 4, ZeroFormat::V2).unwrap(), vec![5]);
    assert_eq!(pack_qzeros(&[5], 1, 1, 4, ZeroFormat::V1).unwrap(), vec![4]);
}

/// AutoGPTQ's 3-bit pack of 32 codes, written out word by word: codes 0-9 at bits `3k`
/// of word 0, code 10's low two bits at bits 30-31 and its high bit at bit 0 of word 1,
/// codes 11-20 at `3(k-11)+1`, code 21's low bit at bit 31 and high two bits at bits 0-1
/// of word 2, codes 22-31 at `3(k-22)+2`.
#[test]
fn three_bit_layout_matches_autogptq() {
    let codes: Vec<u8> = (0..32).map(|k| ((k * 5 + 3) % 8) as u8).collect();
    let c = |k: usize| codes[k] as u32;
    let mut expected = [0u32; 3];
    for k in 0..10 {
        expected[0] |= c(k) << (3 * k);
    }
    expected[0] |= c(10) << 30;
    expected[1] |= (c(10) >> 2) & 1;
    for k in 11..21 {
        expected[1] |= c(k) << (3 * (k - 11) + 1);
    }
    expected[1] |= c(21) << 31;
    expected[2] |= (c(21) >> 1) & 3;
    for k in 22..32 {
        expected[2] |= c(k) << (3 * (k - 22) + 2);
    }
    let words: Vec<u32> = pack_qweight(&codes, 32, 1, 3)
        .unwrap()
        .iter()
        .map(|&w| w as u32)
        .collect();
    assert_eq!(words, expected);
}

#[test]
fn bad_packing_input_is_a_clear_error() {
    assert_eq!(pack_qweight(&[0; 8], 4, 2, 5), Err(QuantError::Bits(5)));
    assert_eq!(
        pack_qweight(&[0; 7], 4, 2, 4),
        Err(QuantError::Length {
            what: "codes",
            expected: 8,
            actual: 7
        })
    );
    assert_eq!(
        pack_qweight(&[0, 0, 9, 0], 4, 1, 3),
        Err(QuantError::Code {
            index: 2,
            code: 9,
            bits: 3
        })
    );
    let zero = pack_qzeros(&[1, 0], 1, 2, 4, ZeroFormat::V1).unwrap_err();
    assert_eq!(
        zero,
        QuantError::ZeroPoint {
            group: 0,
            output: 1,
            zero: 0,
            bits: 4,
            format: ZeroFormat::V1
        }
    );
    assert!(zero.to_string().contains("zero point 0"));
    assert!(matches!(
        pack_qzeros(&[17], 1, 1, 4, ZeroFormat::V1),
        Err(QuantError::ZeroPoint { zero: 17, .. })
    ));
    assert!(matches!(
        pack_qzeros(&[16], 1, 1, 4, ZeroFormat::V2),
        Err(QuantError::ZeroPoint { zero: 16, .. })
    ));
    assert!(matches!(
        unpack_qweight(&[0; 3], 32, 1, 4),
        Err(QuantError::Length {
            what: "qweight",
            ..
        })
    ));
    assert!(matches!(
        unpack_qzeros(&[0; 2], 1, 8, 4, ZeroFormat::V1),
        Err(QuantError::Length { what: "qzeros", .. })
    ));
}
