//! llama.cpp's K-quant presets (`llama-quantize`'s `Q4_K_M` and friends): a GGUF block
//! type per linear layer, chosen by the rules of `llama_tensor_get_type_impl` and
//! `tensor_type_fallback` in llama.cpp's `src/llama-quant.cpp` for a dense Llama model.
//!
//! Each preset has a default type; some layers get more bits (`attn_v` and `ffn_down` of
//! chosen blocks, `attn_output`); a layer whose input width is not a multiple of the
//! type's block (256 for the K-quants) falls back to a legacy type (Q2_K, Q3_K -> Q4_0;
//! Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0). llama.cpp also quantizes the token
//! embedding (and the output head) by its own rules; magr writes those in float
//! (`--gguf-float`), so only the linear layers follow the preset.

use std::fmt;
use std::str::FromStr;

use llama_io::{LinearKind, LlamaConfig};
use quantizers::GgmlBlockType;

use crate::error::PipelineError;

/// A llama.cpp quantization preset (`llama_ftype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(
    non_camel_case_types,
    reason = "the variants are llama.cpp's preset names, as GgmlBlockType's are its types"
)]
pub enum GgufPreset {
    /// `LLAMA_FTYPE_MOSTLY_Q2_K`.
    Q2_K,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_S`.
    Q3_K_S,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_M`.
    Q3_K_M,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_L`.
    Q3_K_L,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_S`.
    Q4_K_S,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_M`.
    Q4_K_M,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_S`.
    Q5_K_S,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_M`.
    Q5_K_M,
    /// `LLAMA_FTYPE_MOSTLY_Q6_K`.
    Q6_K,
}

use GgmlBlockType as T;

impl GgufPreset {
    /// Every preset, in `llama_ftype` order.
    pub const ALL: [Self; 9] = [
        Self::Q2_K,
        Self::Q3_K_S,
        Self::Q3_K_M,
        Self::Q3_K_L,
        Self::Q4_K_S,
        Self::Q4_K_M,
        Self::Q5_K_S,
        Self::Q5_K_M,
        Self::Q6_K,
    ];

    /// The lowercase name (`q4_k_m`), what `--gguf-type` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q2_K => "q2_k",
            Self::Q3_K_S => "q3_k_s",
            Self::Q3_K_M => "q3_k_m",
            Self::Q3_K_L => "q3_k_l",
            Self::Q4_K_S => "q4_k_s",
            Self::Q4_K_M => "q4_k_m",
            Self::Q5_K_S => "q5_k_s",
            Self::Q5_K_M => "q5_k_m",
            Self::Q6_K => "q6_k",
        }
    }

    /// The `llama_ftype` id (`general.file_type`): 10 (Q2_K) ... 18 (Q6_K).
    pub fn file_type(self) -> u32 {
        10 + Self::ALL.iter().position(|&p| p == self).unwrap_or(0) as u32
    }

    /// The type of every layer no rule changes (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlBlockType {
        match self {
            Self::Q2_K => T::Q2_K,
            Self::Q3_K_S | Self::Q3_K_M | Self::Q3_K_L => T::Q3_K,
            Self::Q4_K_S | Self::Q4_K_M => T::Q4_K,
            Self::Q5_K_S | Self::Q5_K_M => T::Q5_K,
            Self::Q6_K => T::Q6_K,
        }
    }

    /// The type of layer `kind` of `block` in a model with `config`: the preset's rule
    /// (before the width fallback), as `llama_tensor_get_type_impl` for a dense Llama
    /// (`i` the block, `n` the number of blocks; `use_more_bits(i, n)`:
    /// `i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`):
    /// - `attn_v`: Q2_K -> Q4_K if `n_head / n_head_kv >= 4`, else Q3_K; Q3_K_M -> Q5_K for
    ///   `i < 2`, else Q4_K; Q3_K_L -> Q5_K; Q4_K_M, Q5_K_M -> Q6_K where
    ///   `use_more_bits(i, n)`; Q4_K_S -> Q5_K for `i < 4`; then, in a 70B model (80
    ///   blocks, grouped-query attention), Q3_K and Q4_K -> Q5_K;
    /// - `ffn_down`: Q2_K -> Q3_K; Q3_K_M -> Q5_K for `i < n/16`, else Q4_K; Q3_K_L ->
    ///   Q5_K; Q4_K_M, Q5_K_M -> Q6_K where `use_more_bits(i, n)`; Q4_K_S -> Q5_K for
    ///   `i < n/8`;
    /// - `attn_output`: Q2_K -> Q3_K; Q3_K_M -> Q4_K; Q3_K_L -> Q5_K;
    /// - every other layer: the default type.
    pub fn rule_type(self, config: &LlamaConfig, block: usize, kind: LinearKind) -> GgmlBlockType {
        let (i, n) = (block, config.num_hidden_layers);
        let use_more_bits = i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize) % 3 == 2;
        let default = self.default_type();
        match kind {
            LinearKind::V => {
                let gqa = config.num_attention_heads / config.num_key_value_heads.max(1);
                let ty = match self {
                    Self::Q2_K if gqa >= 4 => T::Q4_K,
                    Self::Q2_K => T::Q3_K,
                    Self::Q3_K_M if i < 2 => T::Q5_K,
                    Self::Q3_K_M => T::Q4_K,
                    Self::Q3_K_L => T::Q5_K,
                    Self::Q4_K_M | Self::Q5_K_M if use_more_bits => T::Q6_K,
                    Self::Q4_K_S if i < 4 => T::Q5_K,
                    _ => default,
                };
                let is_70b = n == 80 && config.num_attention_heads != config.num_key_value_heads;
                if is_70b && matches!(ty, T::Q3_K | T::Q4_K) {
                    T::Q5_K
                } else {
                    ty
                }
            }
            LinearKind::Down => match self {
                Self::Q2_K => T::Q3_K,
                Self::Q3_K_M if i < n / 16 => T::Q5_K,
                Self::Q3_K_M => T::Q4_K,
                Self::Q3_K_L => T::Q5_K,
                Self::Q4_K_M | Self::Q5_K_M if use_more_bits => T::Q6_K,
                Self::Q4_K_S if i < n / 8 => T::Q5_K,
                _ => default,
            },
            LinearKind::O => match self {
                Self::Q2_K => T::Q3_K,
                Self::Q3_K_M => T::Q4_K,
                Self::Q3_K_L => T::Q5_K,
                _ => default,
            },
            LinearKind::Q | LinearKind::K | LinearKind::Gate | LinearKind::Up => default,
        }
    }

    /// The type layer `kind` of `block` is stored in: [`GgufPreset::rule_type`], then
    /// llama.cpp's fallback for an input width that is not whole blocks of it.
    ///
    /// # Errors
    /// [`PipelineError::Settings`] for an input width that is not a multiple of 32 either
    /// (llama.cpp would store such a layer in F16, which magr does not write).
    pub fn layer_type(
        self,
        config: &LlamaConfig,
        block: usize,
        kind: LinearKind,
    ) -> Result<GgmlBlockType, PipelineError> {
        let ty = self.rule_type(config, block, kind);
        let (_, inputs) = kind.shape(config);
        let fitted = if inputs.is_multiple_of(ty.block_size()) {
            ty
        } else {
            match ty {
                T::Q2_K | T::Q3_K => T::Q4_0,
                T::Q4_K => T::Q5_0,
                T::Q5_K => T::Q5_1,
                T::Q6_K => T::Q8_0,
                other => other,
            }
        };
        fitted.check_width(inputs).map_err(|e| {
            PipelineError::Settings(format!(
                "{} under preset {self}: {e} (llama.cpp would keep it in F16; magr stores every linear layer quantized)",
                kind.gguf_name(block)
            ))
        })?;
        Ok(fitted)
    }
}

impl fmt::Display for GgufPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgufPreset {
    type Err = PipelineError;

    /// A preset name (`q4_k_m`), in any case.
    fn from_str(s: &str) -> Result<Self, PipelineError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                PipelineError::Settings(format!(
                    "unknown GGUF preset {s:?}: use one of {}",
                    Self::ALL.map(|p| p.name()).join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layers: usize, hidden: usize, inter: usize, heads: usize, kv: usize) -> LlamaConfig {
        LlamaConfig {
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            vocab_size: 100,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
            max_position_embeddings: 128,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// The types of `kind` over the blocks, as a string of type names.
    fn column(preset: GgufPreset, config: &LlamaConfig, kind: LinearKind) -> Vec<&'static str> {
        (0..config.num_hidden_layers)
            .map(|b| preset.layer_type(config, b, kind).unwrap().name())
            .collect()
    }

    /// Worked out by hand from `llama_tensor_get_type_impl`: with 8 blocks,
    /// `use_more_bits` holds for blocks 0 (< 8/8), 3 and 6 ((i - 1) % 3 == 2) and 7
    /// (>= 7 * 8/8); no fallback (every width a multiple of 256).
    #[test]
    fn rules_on_eight_blocks() {
        let c = config(8, 256, 512, 4, 2);
        let (q4, q5, q6) = ("q4_K", "q5_K", "q6_K");
        let more = |hi: &'static str, lo: &'static str| {
            (0..8)
                .map(|i| if [0, 3, 6, 7].contains(&i) { hi } else { lo })
                .collect::<Vec<_>>()
        };
        use GgufPreset as P;
        use LinearKind as K;
        assert_eq!(column(P::Q4_K_M, &c, K::V), more(q6, q4));
        assert_eq!(column(P::Q4_K_M, &c, K::Down), more(q6, q4));
        assert_eq!(column(P::Q5_K_M, &c, K::Down), more(q6, q5));
        for kind in [K::Q, K::K, K::O, K::Gate, K::Up] {
            assert_eq!(column(P::Q4_K_M, &c, kind), [q4; 8]);
        }
        assert_eq!(
            column(P::Q3_K_M, &c, K::V),
            [q5, q5, q4, q4, q4, q4, q4, q4]
        );
        // i < 8/16 = 0 never holds.
        assert_eq!(column(P::Q3_K_M, &c, K::Down), [q4; 8]);
        assert_eq!(column(P::Q3_K_M, &c, K::O), [q4; 8]);
        assert_eq!(column(P::Q3_K_M, &c, K::Gate), ["q3_K"; 8]);
        assert_eq!(
            column(P::Q4_K_S, &c, K::V),
            [q5, q5, q5, q5, q4, q4, q4, q4]
        );
        assert_eq!(
            column(P::Q4_K_S, &c, K::Down),
            [q5, q4, q4, q4, q4, q4, q4, q4]
        );
        for kind in [K::V, K::O, K::Down] {
            assert_eq!(column(P::Q2_K, &c, kind), ["q3_K"; 8], "{kind}");
            assert_eq!(column(P::Q3_K_L, &c, kind), [q5; 8], "{kind}");
        }
        assert_eq!(column(P::Q2_K, &c, K::Up), ["q2_K"; 8]);
        // With four query heads per KV head, Q2_K's attn_v gets Q4_K.
        let gqa4 = config(8, 256, 512, 4, 1);
        assert_eq!(column(P::Q2_K, &gqa4, K::V), [q4; 8]);
        for preset in [P::Q3_K_S, P::Q5_K_S, P::Q6_K] {
            for kind in LinearKind::ALL {
                let expected = preset.default_type().name();
                assert_eq!(column(preset, &c, kind), [expected; 8]);
            }
        }
    }

    /// SmolLM2-135M's shapes: 576-wide layers fall back, the 1536-wide ffn_down keeps
    /// its K-quant; Q4_K_M's more-bits blocks of 30 are 0-2, 5, 8, ..., 23 and 26-29.
    #[test]
    fn fallbacks_on_smollm2_shapes() {
        let c = config(30, 576, 1536, 9, 3);
        let more: Vec<usize> = (0..30)
            .filter(|&i| !(3..26).contains(&i) || (i - 3) % 3 == 2)
            .collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        for b in 0..30 {
            let ty = |p: GgufPreset, k| p.layer_type(&c, b, k).unwrap();
            let m = more.contains(&b);
            assert_eq!(ty(GgufPreset::Q4_K_M, LinearKind::Q), T::Q5_0);
            let v = if m { T::Q8_0 } else { T::Q5_0 };
            assert_eq!(ty(GgufPreset::Q4_K_M, LinearKind::V), v);
            let down = if m { T::Q6_K } else { T::Q4_K };
            assert_eq!(ty(GgufPreset::Q4_K_M, LinearKind::Down), down);
            assert_eq!(ty(GgufPreset::Q2_K, LinearKind::Gate), T::Q4_0);
            assert_eq!(ty(GgufPreset::Q2_K, LinearKind::Down), T::Q3_K);
            assert_eq!(ty(GgufPreset::Q5_K_S, LinearKind::O), T::Q5_1);
            assert_eq!(ty(GgufPreset::Q6_K, LinearKind::K), T::Q8_0);
        }
        // A width that is not even a multiple of 32 has no GGUF type magr can write.
        let odd = config(2, 100, 512, 4, 2);
        let e = GgufPreset::Q4_K_M
            .layer_type(&odd, 0, LinearKind::Q)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("F16"),
            "{e}"
        );
    }

    #[test]
    fn names_and_file_types() {
        for (k, p) in GgufPreset::ALL.into_iter().enumerate() {
            assert_eq!(p.name().parse::<GgufPreset>().unwrap(), p);
            assert_eq!(p.name().to_uppercase().parse::<GgufPreset>().unwrap(), p);
            assert_eq!(p.file_type(), 10 + k as u32);
        }
        let e = "q4_0".parse::<GgufPreset>().unwrap_err().to_string();
        assert!(e.contains("q4_k_m"), "{e}");
    }
}
