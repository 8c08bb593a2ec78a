//! The forward pass, one decoder block at a time.
//!
//! Hidden states are `[batch, seq, hidden]` f32 tensors; every sequence of a batch
//! starts at position 0 and attention never crosses sequences. Block `i` computes
//!
//! ```text
//! a = RMSNorm(x) ;  x = x + o_proj(Attention(q_proj a, k_proj a, v_proj a))
//! m = RMSNorm(x) ;  x = x + down_proj(silu(gate_proj m) * up_proj m)
//! ```
//!
//! with RoPE (`rotate_half` layout) on q and k and a causal mask. The logits are
//! `lm_head(RMSNorm(x))`.

use candle_core::{Device, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::attention::{causal_attention, ensure_f32, rope_tables};
use crate::capture::InputSink;
use crate::error::{LlamaIoError, Result};
use crate::linear::{LinearInput, LinearKind};
use crate::model::Model;

/// Elements per parallel task of the SwiGLU activation.
const SWIGLU_CHUNK: usize = 1 << 16;

/// What every block of one forward call shares: the RoPE tables for its length.
pub(crate) struct SequenceContext {
    cos: Tensor,
    sin: Tensor,
}

impl Model {
    pub(crate) fn sequence_context(&self, seq_len: usize) -> Result<SequenceContext> {
        let (cos, sin) = rope_tables(
            seq_len,
            self.config.head_dim,
            self.config.rope_theta,
            &self.device,
        )?;
        Ok(SequenceContext { cos, sin })
    }

    fn host_tensor(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, shape, &self.device)?)
    }

    /// Hidden states `[batch, seq, hidden]` of token sequences that all have the
    /// same non-zero length (the rows of the embedding matrix).
    pub fn embed<S: AsRef<[u32]>>(&self, sequences: &[S]) -> Result<Tensor> {
        let batch = sequences.len();
        let seq = sequences.first().map_or(0, |s| s.as_ref().len());
        if batch == 0 || seq == 0 {
            return Err(LlamaIoError::InvalidArgument(
                "embed needs at least one non-empty sequence".into(),
            ));
        }
        let d = self.config.hidden_size;
        let mut hidden = Vec::with_capacity(batch * seq * d);
        for (i, s) in sequences.iter().enumerate() {
            let s = s.as_ref();
            if s.len() != seq {
                return Err(LlamaIoError::InvalidArgument(format!(
                    "sequence {i} has {} tokens, sequence 0 has {seq}: a batch needs equal lengths",
                    s.len()
                )));
            }
            for &token in s {
                let row = token as usize;
                if row >= self.config.vocab_size {
                    return Err(LlamaIoError::InvalidArgument(format!(
                        "token id {token} in sequence {i} is outside the vocabulary of {}",
                        self.config.vocab_size
                    )));
                }
                hidden.extend_from_slice(&self.embedding[row * d..(row + 1) * d]);
            }
        }
        Ok(Tensor::from_vec(hidden, (batch, seq, d), &self.device)?)
    }

    /// Runs decoder block `block` on `hidden` `[batch, seq, hidden]`.
    pub fn run_block(&self, block: usize, hidden: &Tensor) -> Result<Tensor> {
        let ctx = self.sequence_context(self.check_hidden(hidden)?)?;
        self.block_forward(block, hidden, &ctx, None)
    }

    /// Runs decoder block `block` on `hidden` and hands `sink` each of the four
    /// distinct inputs of its linear layers, `[batch * seq, width]`, in the order
    /// attention, attention output, MLP, MLP hidden.
    pub fn run_block_capturing(
        &self,
        block: usize,
        hidden: &Tensor,
        sink: &mut dyn InputSink,
    ) -> Result<Tensor> {
        let ctx = self.sequence_context(self.check_hidden(hidden)?)?;
        self.block_forward(block, hidden, &ctx, Some(sink))
    }

    /// Final RMSNorm and output head: logits `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        self.head_logits(&self.final_norm(hidden)?)
    }

    /// Logits `[batch, seq, vocab]` of token sequences: embedding, every block, head.
    pub fn forward<S: AsRef<[u32]>>(&self, sequences: &[S]) -> Result<Tensor> {
        let hidden = self.hidden_states(sequences)?;
        self.logits(&hidden)
    }

    /// Hidden states after the last block (before the final norm).
    pub fn hidden_states<S: AsRef<[u32]>>(&self, sequences: &[S]) -> Result<Tensor> {
        let mut hidden = self.embed(sequences)?;
        let ctx = self.sequence_context(hidden.dim(1)?)?;
        for block in 0..self.num_blocks() {
            hidden = self.block_forward(block, &hidden, &ctx, None)?;
        }
        Ok(hidden)
    }

    /// `RMSNorm(hidden)` with the final norm's gain.
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        let gain = self.host_tensor(&self.final_norm, &[self.config.hidden_size])?;
        self.rms_norm(hidden, &gain)
    }

    /// `normed @ head^T` for `normed` `[.., hidden]`: logits `[.., vocab]`.
    pub(crate) fn head_logits(&self, normed: &Tensor) -> Result<Tensor> {
        let (vocab, d) = (self.config.vocab_size, self.config.hidden_size);
        self.times_weight_t(normed, self.lm_head(), vocab, d)
    }

    /// `x w^T` for `x` `[.., inp]` and host weights `w` `(out x inp)` row-major:
    /// `[.., out]`. On the CPU a faer product straight from the host weights (no
    /// copy into a tensor; faer is faster than candle's CPU matmul on these shapes),
    /// elsewhere candle's matmul on the device.
    fn times_weight_t(&self, x: &Tensor, w: &[f32], out: usize, inp: usize) -> Result<Tensor> {
        let rows = x.elem_count() / inp;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("a matrix has a last dimension") = out;
        if !self.device.is_cpu() {
            let w = self.host_tensor(w, &[out, inp])?;
            return Ok(x.reshape((rows, inp))?.matmul(&w.t()?)?.reshape(dims)?);
        }
        let y = with_host_slice(x, |xs| {
            let mut y = vec![0.0f32; rows * out];
            matmul(
                MatMut::from_row_major_slice_mut(&mut y, rows, out),
                Accum::Replace,
                MatRef::from_row_major_slice(xs, rows, inp),
                MatRef::from_row_major_slice(w, out, inp).transpose(),
                1.0,
                Par::rayon(0),
            );
            y
        })?;
        Ok(Tensor::from_vec(y, dims, &self.device)?)
    }

    /// `silu(gate) * up`: one vectorised pass over the host values on the CPU,
    /// candle's operations elsewhere.
    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if !self.device.is_cpu() {
            return Ok((candle_nn::ops::silu(gate)? * up)?);
        }
        let out = with_host_slice(gate, |g| {
            with_host_slice(up, |u| {
                let mut out = vec![0.0f32; g.len()];
                out.par_chunks_mut(SWIGLU_CHUNK)
                    .zip(g.par_chunks(SWIGLU_CHUNK).zip(u.par_chunks(SWIGLU_CHUNK)))
                    .for_each(|(o, (g, u))| crate::softmax::silu_mul(g, u, o));
                out
            })
        })??;
        Ok(Tensor::from_vec(out, gate.dims(), &self.device)?)
    }

    fn rms_norm(&self, x: &Tensor, gain: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            x,
            gain,
            self.config.rms_norm_eps as f32,
        )?)
    }

    /// Validates `[batch, seq, hidden]` f32 and returns `seq`.
    fn check_hidden(&self, hidden: &Tensor) -> Result<usize> {
        ensure_f32(hidden, "hidden states")?;
        match hidden.dims() {
            &[b, t, d] if b > 0 && t > 0 && d == self.config.hidden_size => Ok(t),
            dims => Err(LlamaIoError::InvalidArgument(format!(
                "hidden states have shape {dims:?}, expected [batch, seq, {}]",
                self.config.hidden_size
            ))),
        }
    }

    pub(crate) fn block_forward(
        &self,
        block: usize,
        hidden: &Tensor,
        ctx: &SequenceContext,
        mut sink: Option<&mut dyn InputSink>,
    ) -> Result<Tensor> {
        let weights = self.block(block)?;
        let cfg = &self.config;
        let (b, t, d) = hidden.dims3()?;
        let (hd, nh, nkv) = (
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let linear = |kind: LinearKind, x: &Tensor| -> Result<Tensor> {
            let (out, inp) = kind.shape(cfg);
            self.times_weight_t(x, &weights.linears[kind.index()], out, inp)
        };
        let mut capture = |input: LinearInput, x: &Tensor| -> Result<()> {
            match sink.as_deref_mut() {
                Some(s) => s.consume(input, x),
                None => Ok(()),
            }
        };

        // Attention.
        let attn_gain = self.host_tensor(&weights.attn_norm, &[d])?;
        let a = self.rms_norm(hidden, &attn_gain)?.reshape((b * t, d))?;
        capture(LinearInput::Attention, &a)?;
        let heads = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(linear(LinearKind::Q, &a)?, nh)?;
        let k = heads(linear(LinearKind::K, &a)?, nkv)?;
        let v = heads(linear(LinearKind::V, &a)?, nkv)?;
        let q = candle_nn::rotary_emb::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &ctx.cos, &ctx.sin)?;
        let attn =
            causal_attention(&q, &k, &v, 1.0 / (hd as f64).sqrt())?.reshape((b * t, nh * hd))?;
        capture(LinearInput::AttentionOutput, &attn)?;
        let hidden = (hidden + linear(LinearKind::O, &attn)?.reshape((b, t, d))?)?;

        // MLP.
        let mlp_gain = self.host_tensor(&weights.mlp_norm, &[d])?;
        let m = self.rms_norm(&hidden, &mlp_gain)?.reshape((b * t, d))?;
        capture(LinearInput::Mlp, &m)?;
        let gate = linear(LinearKind::Gate, &m)?;
        let up = linear(LinearKind::Up, &m)?;
        let act = self.swiglu(&gate, &up)?;
        capture(LinearInput::MlpHidden, &act)?;
        let down = linear(LinearKind::Down, &act)?.reshape((b, t, d))?;
        Ok((hidden + down)?)
    }
}

/// Calls `f` with the row-major f32 values of `t` (contiguous), borrowing the
/// storage on the CPU and copying to the host from other devices.
pub(crate) fn with_host_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    ensure_f32(t, "tensor")?;
    let t = if t.device().is_cpu() {
        t.contiguous()?
    } else {
        t.to_device(&Device::Cpu)?
    };
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Err(candle_core::Error::Msg("expected a contiguous CPU tensor".into()).into());
    };
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}
