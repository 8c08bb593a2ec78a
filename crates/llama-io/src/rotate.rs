//! Function-preserving changes of a model's weights: the RMSNorm gains folded into the
//! layers that read them, and an orthogonal rotation of the residual stream (QuaRot's
//! computational invariance). The rotated model computes the same logits (up to
//! rounding) with weights that lie on no quantization grid of the original's.
//!
//! With gains `g`, a block reads `RMSNorm(x) = g ⊙ x / rms(x)`; so `W RMSNorm(x) =
//! (W diag(g)) x / rms(x)`, and the gains can live in the readers (q, k, v after the
//! attention norm; gate, up after the MLP norm; the head after the final norm). With
//! gains of 1 and `Q` orthogonal, the stream `x' = Q^T x` has `rms(x') = rms(x)`, so
//! every reader `W` becomes `W Q`, every writer (o, down) `Q^T W`, the embedding
//! `E Q` (rows are tokens) and the head `H Q`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{LlamaIoError, Result};
use crate::linear::{LinearInput, LinearKind};
use crate::model::{Model, check_finite};
use crate::names::TensorRole;

/// Largest `|Q^T Q - I|` entry accepted as orthogonal.
const ORTHOGONALITY_TOLERANCE: f64 = 1e-9;

/// A random orthogonal `n x n` matrix, Haar-distributed, the same for the same `seed`:
/// the `Q` of the QR factorisation of a standard normal matrix, its columns' signs set
/// so that `R` has a positive diagonal.
pub fn random_orthogonal(n: usize, seed: u64) -> Mat<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = Mat::<f64>::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng));
    let qr = a.qr();
    let mut q = qr.compute_Q();
    let r = qr.R();
    for j in 0..n {
        if r[(j, j)] < 0.0 {
            for i in 0..n {
                q[(i, j)] = -q[(i, j)];
            }
        }
    }
    q
}

/// `a` (`rows x cols` row-major f32) as an f64 matrix.
fn to_mat(a: &[f32], rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| f64::from(a[i * cols + j]))
}

/// `lhs rhs`, rounded to f32, row-major.
fn product(lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, par: Par) -> Vec<f32> {
    let mut out = Mat::<f64>::zeros(lhs.nrows(), rhs.ncols());
    matmul(out.as_mut(), Accum::Replace, lhs, rhs, 1.0, par);
    let mut values = Vec::with_capacity(out.nrows() * out.ncols());
    for i in 0..out.nrows() {
        values.extend((0..out.ncols()).map(|j| out[(i, j)] as f32));
    }
    values
}

impl Model {
    /// Folds every RMSNorm gain into the layers that read the normalized stream (module
    /// docs) and sets the gains to 1; a tied head becomes a head of its own. The model
    /// computes the same function (up to f32 rounding of the products). Every linear
    /// weight that reads a norm is then in memory.
    ///
    /// # Errors
    /// A stored weight that cannot be read; a folded value that is not finite.
    pub fn fold_norm_gains(&mut self) -> Result<()> {
        for block in 0..self.num_blocks() {
            for input in [LinearInput::Attention, LinearInput::Mlp] {
                let gains = match input {
                    LinearInput::Attention => &mut self.blocks[block].attn_norm,
                    _ => &mut self.blocks[block].mlp_norm,
                };
                let gains = std::mem::replace(gains, vec![1.0; gains.len()]);
                for &kind in input.consumers() {
                    let mut w = self.linear_weight(block, kind)?.into_owned();
                    scale_columns(&mut w, &gains);
                    self.set_linear_weight(block, kind, &w)?;
                }
            }
        }
        let mut head = self.lm_head().to_vec();
        scale_columns(&mut head, &self.final_norm);
        check_finite(&TensorRole::LmHead.hf_name(), &head)?;
        self.final_norm.fill(1.0);
        self.lm_head = Some(head);
        self.config.tie_word_embeddings = false;
        Ok(())
    }

    /// Rotates the residual stream by the orthogonal `q` (`hidden x hidden`): `x' = Q^T
    /// x` (module docs). The gains must be 1 ([`Model::fold_norm_gains`] first) and the
    /// head untied, else the function would change. Products in f64, stored in f32.
    ///
    /// # Errors
    /// ([`LlamaIoError::InvalidArgument`]) `q` of the wrong size or not orthogonal, a
    /// gain that is not 1, a tied head; a stored weight that cannot be read.
    pub fn rotate_residual(&mut self, q: MatRef<'_, f64>, par: Par) -> Result<()> {
        let d = self.config.hidden_size;
        if q.nrows() != d || q.ncols() != d {
            return Err(LlamaIoError::InvalidArgument(format!(
                "the rotation is {} x {}, the hidden size is {d}",
                q.nrows(),
                q.ncols()
            )));
        }
        let mut qtq = Mat::<f64>::zeros(d, d);
        matmul(qtq.as_mut(), Accum::Replace, q.transpose(), q, 1.0, par);
        let off = (0..d)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| (qtq[(i, j)] - f64::from(u8::from(i == j))).abs())
            .fold(0.0, f64::max);
        if off > ORTHOGONALITY_TOLERANCE {
            return Err(LlamaIoError::InvalidArgument(format!(
                "the rotation is not orthogonal: |Q^T Q - I| reaches {off:.3e}"
            )));
        }
        let gains_are_one = self
            .blocks
            .iter()
            .flat_map(|b| b.attn_norm.iter().chain(&b.mlp_norm))
            .chain(&self.final_norm)
            .all(|&g| g == 1.0);
        if !gains_are_one || self.lm_head.is_none() {
            return Err(LlamaIoError::InvalidArgument(
                "rotating the residual stream needs the RMSNorm gains folded into the \
                 layers (all 1) and an untied head"
                    .into(),
            ));
        }
        let vocab = self.config.vocab_size;
        self.embedding = product(to_mat(&self.embedding, vocab, d).as_ref(), q, par);
        let head = self.lm_head.as_deref().expect("checked untied");
        self.lm_head = Some(product(to_mat(head, vocab, d).as_ref(), q, par));
        for block in 0..self.num_blocks() {
            for kind in LinearKind::ALL {
                let (out, inp) = self.linear_shape(kind);
                let w = to_mat(&self.linear_weight(block, kind)?, out, inp);
                let rotated = match kind {
                    LinearKind::O | LinearKind::Down => product(q.transpose(), w.as_ref(), par),
                    _ => product(w.as_ref(), q, par),
                };
                self.set_linear_weight(block, kind, &rotated)?;
            }
        }
        Ok(())
    }
}

/// `w (rows x gains.len()) ← w diag(gains)`.
fn scale_columns(w: &mut [f32], gains: &[f32]) {
    for row in w.chunks_exact_mut(gains.len()) {
        for (v, g) in row.iter_mut().zip(gains) {
            *v *= g;
        }
    }
}
