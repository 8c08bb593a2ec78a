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
//!
//! Every call that multiplies by weights takes a [`Par`]: on the CPU the faer products
//! and the parallel loops (attention tasks, SwiGLU) run as it says. The loops' results
//! do not depend on it; faer's products are its own (`Par::rayon(0)` gives the results
//! of the former implicit default).

use candle_core::Tensor;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::attention::{causal_attention, rope_tables};
use crate::capture::InputSink;
use crate::error::{LlamaIoError, Result};
use crate::gemm::gemm;
use crate::host::{FollowPar, ensure_f32, with_host_slice};
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
    /// The RoPE tables for sequences of `seq_len` tokens on the model's device.
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
    ///
    /// # Errors
    /// No sequence, an empty one, unequal lengths, a token outside the vocabulary.
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

    /// Runs decoder block `block` on `hidden` `[batch, seq, hidden]`, the products
    /// and loops as `par` says: the hidden states after the block, same shape.
    ///
    /// # Errors
    /// `hidden` not f32 `[batch, seq, hidden]`, `block` out of range, a failed tensor
    /// operation.
    pub fn run_block(&self, block: usize, hidden: &Tensor, par: Par) -> Result<Tensor> {
        let ctx = self.sequence_context(self.check_hidden(hidden)?)?;
        self.block_forward(block, hidden, &ctx, par, None)
    }

    /// [`Model::run_block`] that also hands `sink` each of the four distinct inputs of
    /// the block's linear layers, `[batch * seq, width]`, in the order attention,
    /// attention output, MLP, MLP hidden.
    ///
    /// # Errors
    /// As [`Model::run_block`]; the sink's own errors, which end the pass.
    pub fn run_block_capturing(
        &self,
        block: usize,
        hidden: &Tensor,
        par: Par,
        sink: &mut dyn InputSink,
    ) -> Result<Tensor> {
        let ctx = self.sequence_context(self.check_hidden(hidden)?)?;
        self.block_forward(block, hidden, &ctx, par, Some(sink))
    }

    /// Final RMSNorm and output head: logits `[batch, seq, vocab]`, the head's product
    /// as `par` says.
    ///
    /// # Errors
    /// `hidden` not f32 `[batch, seq, hidden]`, a failed tensor operation.
    pub fn logits(&self, hidden: &Tensor, par: Par) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        self.head_logits(&self.final_norm(hidden)?, par)
    }

    /// Logits `[batch, seq, vocab]` of token sequences: embedding, every block, head,
    /// as `par` says.
    ///
    /// # Errors
    /// As [`Model::embed`], [`Model::run_block`].
    pub fn forward<S: AsRef<[u32]>>(&self, sequences: &[S], par: Par) -> Result<Tensor> {
        let hidden = self.hidden_states(sequences, par)?;
        self.logits(&hidden, par)
    }

    /// Hidden states after the last block (before the final norm) of token
    /// sequences, as `par` says.
    ///
    /// # Errors
    /// As [`Model::embed`], [`Model::run_block`].
    pub fn hidden_states<S: AsRef<[u32]>>(&self, sequences: &[S], par: Par) -> Result<Tensor> {
        let mut hidden = self.embed(sequences)?;
        let ctx = self.sequence_context(hidden.dim(1)?)?;
        for block in 0..self.num_blocks() {
            hidden = self.block_forward(block, &hidden, &ctx, par, None)?;
        }
        Ok(hidden)
    }

    /// `RMSNorm(hidden)` with the final norm's gain (no product: no `Par`).
    ///
    /// # Errors
    /// A failed tensor operation (for example a last dimension other than `hidden`).
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        let gain = self.host_tensor(&self.final_norm, &[self.config.hidden_size])?;
        self.rms_norm(hidden, &gain)
    }

    /// `normed @ head^T` for `normed` `[.., hidden]`: logits `[.., vocab]`.
    pub(crate) fn head_logits(&self, normed: &Tensor, par: Par) -> Result<Tensor> {
        let (vocab, d) = (self.config.vocab_size, self.config.hidden_size);
        self.times_weight_t(normed, self.lm_head(), vocab, d, par)
    }

    /// `x w^T` for `x` `[.., inp]` and host weights `w` `(out x inp)` row-major:
    /// `[.., out]`. On the CPU a faer product straight from the host weights (no
    /// copy into a tensor; faer is faster than candle's CPU matmul on these shapes),
    /// elsewhere candle's matmul on the device.
    pub(crate) fn times_weight_t(
        &self,
        x: &Tensor,
        w: &[f32],
        out: usize,
        inp: usize,
        par: Par,
    ) -> Result<Tensor> {
        let rows = x.elem_count() / inp;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("a matrix has a last dimension") = out;
        if !self.device.is_cpu() {
            let w = self.host_tensor(w, &[out, inp])?;
            return Ok(gemm(&x.reshape((rows, inp))?, &w.t()?)?.reshape(dims)?);
        }
        let y = with_host_slice(x, |xs| {
            let mut y = vec![0.0f32; rows * out];
            matmul(
                MatMut::from_row_major_slice_mut(&mut y, rows, out),
                Accum::Replace,
                MatRef::from_row_major_slice(xs, rows, inp),
                MatRef::from_row_major_slice(w, out, inp).transpose(),
                1.0,
                par,
            );
            y
        })?;
        Ok(Tensor::from_vec(y, dims, &self.device)?)
    }

    /// `silu(gate) * up`: one vectorised pass over the host values on the CPU,
    /// candle's operations elsewhere. Elementwise: the same bits under any `par`.
    fn swiglu(&self, gate: &Tensor, up: &Tensor, par: Par) -> Result<Tensor> {
        if !self.device.is_cpu() {
            return Ok((candle_nn::ops::silu(gate)? * up)?);
        }
        let out = with_host_slice(gate, |g| {
            with_host_slice(up, |u| {
                let mut out = vec![0.0f32; g.len()];
                out.par_chunks_mut(SWIGLU_CHUNK)
                    .zip(g.par_chunks(SWIGLU_CHUNK).zip(u.par_chunks(SWIGLU_CHUNK)))
                    .follow(par)
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

    /// Block `block` on `hidden` (checked by the caller) with the tables of `ctx`.
    pub(crate) fn block_forward(
        &self,
        block: usize,
        hidden: &Tensor,
        ctx: &SequenceContext,
        par: Par,
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
            let w = weights.linears[kind.index()].values()?;
            self.times_weight_t(x, &w, out, inp, par)
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
        let attn = causal_attention(&q, &k, &v, 1.0 / (hd as f64).sqrt(), par)?
            .reshape((b * t, nh * hd))?;
        capture(LinearInput::AttentionOutput, &attn)?;
        let hidden = (hidden + linear(LinearKind::O, &attn)?.reshape((b, t, d))?)?;

        // MLP.
        let mlp_gain = self.host_tensor(&weights.mlp_norm, &[d])?;
        let m = self.rms_norm(&hidden, &mlp_gain)?.reshape((b * t, d))?;
        capture(LinearInput::Mlp, &m)?;
        let gate = linear(LinearKind::Gate, &m)?;
        let up = linear(LinearKind::Up, &m)?;
        let act = self.swiglu(&gate, &up, par)?;
        capture(LinearInput::MlpHidden, &act)?;
        let down = linear(LinearKind::Down, &act)?.reshape((b, t, d))?;
        Ok((hidden + down)?)
    }
}
