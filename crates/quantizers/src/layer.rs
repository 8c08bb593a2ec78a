//! The layer problem every quantizer solves, its result, and the `Quantizer` trait.

use faer::{Accum, Mat, MatRef, Par, linalg::matmul::matmul};

use crate::error::{check_finite, check_shape};
use crate::{Grid, GridSpec, QuantError};

/// One linear layer to quantize.
///
/// `weights` (in x out, a column per output channel) are what the quantizer rounds, for
/// instance MagR's output; `original` (default: the weights) is the target `W0` of
/// coordinate descent and of the reported layer loss; `hessian` is `H = X^T X` (in x in,
/// symmetric positive semi-definite; OPTQ's factorisation reads its lower triangle).
#[derive(Debug, Clone, Copy)]
pub struct LayerProblem<'a> {
    /// Weights to quantize, in x out.
    pub weights: MatRef<'a, f32>,
    /// The layer's original weights `W0` (the loss target); `None` = `weights`.
    pub original: Option<MatRef<'a, f32>>,
    /// `H = X^T X`, in x in.
    pub hessian: MatRef<'a, f32>,
}

impl<'a> LayerProblem<'a> {
    /// The problem of quantizing `weights` against themselves.
    pub fn new(weights: MatRef<'a, f32>, hessian: MatRef<'a, f32>) -> Self {
        Self {
            weights,
            original: None,
            hessian,
        }
    }

    /// The same problem with `original` as the loss target `W0`.
    pub fn with_original(self, original: MatRef<'a, f32>) -> Self {
        Self {
            original: Some(original),
            ..self
        }
    }

    /// The loss target `W0`.
    pub fn target(&self) -> MatRef<'a, f32> {
        self.original.unwrap_or(self.weights)
    }

    /// Checks that the layer is not empty, that the shapes agree and that every entry is
    /// finite.
    ///
    /// # Errors
    /// [`QuantError::Shape`] or [`QuantError::NonFinite`] naming the matrix.
    pub fn validate(&self) -> Result<(), QuantError> {
        let (n, m) = (self.weights.nrows(), self.weights.ncols());
        if n == 0 || m == 0 {
            return Err(QuantError::Parameter(format!(
                "the weights are {n} x {m}; a layer needs at least one input and one output"
            )));
        }
        check_shape("H", self.hessian, n, n)?;
        check_finite("weights", self.weights)?;
        check_finite("H", self.hessian)?;
        if let Some(o) = self.original {
            check_shape("original weights", o, n, m)?;
            check_finite("original weights", o)?;
        }
        Ok(())
    }
}

/// A quantized linear layer.
///
/// Layouts: codes follow `W` (in x out, column-major: `codes()[j * inputs + i]` is the
/// code of input `i` in output `j`); grids follow the checkpoint's `[groups, out]`
/// (`grids()[g * outputs + j]`); input `i` uses group `g_idx()[i]`.
///
/// Invariant: `dequantized()[(i, j)] == grid(i, j).value(code(i, j))` exactly, and
/// `layer_loss()` is `tr((W0 - Q)^T H (W0 - Q))` for that `Q`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    spec: GridSpec,
    inputs: usize,
    outputs: usize,
    codes: Vec<u8>,
    grids: Vec<Grid>,
    g_idx: Vec<u32>,
    dequantized: Mat<f32>,
    layer_loss: f64,
}

impl QuantizedLinear {
    /// Builds the result from codes, grids and groups (layouts as in the type's docs):
    /// the dequantized weights come from the codes, then the layer loss against the
    /// problem's target.
    pub(crate) fn assemble(
        spec: GridSpec,
        codes: Vec<u8>,
        grids: Vec<Grid>,
        g_idx: Vec<u32>,
        problem: &LayerProblem<'_>,
        par: Par,
    ) -> Self {
        let (inputs, outputs) = (problem.weights.nrows(), problem.weights.ncols());
        debug_assert_eq!(codes.len(), inputs * outputs);
        debug_assert_eq!(grids.len() % outputs, 0);
        debug_assert_eq!(g_idx.len(), inputs);
        let mut q = Self {
            spec,
            inputs,
            outputs,
            codes,
            grids,
            g_idx,
            dequantized: Mat::zeros(inputs, outputs),
            layer_loss: 0.0,
        };
        q.refresh(problem, par);
        q
    }

    /// Recomputes the dequantized weights from the codes, and the layer loss.
    pub(crate) fn refresh(&mut self, problem: &LayerProblem<'_>, par: Par) {
        for j in 0..self.outputs {
            for i in 0..self.inputs {
                self.dequantized[(i, j)] = self.grid(i, j).value(self.code(i, j));
            }
        }
        self.layer_loss = loss(
            problem.target(),
            self.dequantized.as_ref(),
            problem.hessian,
            par,
        );
    }

    /// Codes, mutable, for the refinement sweeps (which call [`Self::refresh`] after).
    pub(crate) fn codes_mut(&mut self) -> &mut [u8] {
        &mut self.codes
    }

    /// The grid family.
    pub fn spec(&self) -> GridSpec {
        self.spec
    }
    /// Number of inputs (rows of `W`).
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Number of outputs (columns of `W`).
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// Number of groups per channel (1 per channel).
    pub fn groups(&self) -> usize {
        self.grids.len() / self.outputs
    }
    /// All codes, `[j * inputs + i]`, each in `0..=maxq`.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    /// The code of input `i` in output `j`.
    pub fn code(&self, i: usize, j: usize) -> u32 {
        self.codes[j * self.inputs + i] as u32
    }
    /// All grids, `[g * outputs + j]`.
    pub fn grids(&self) -> &[Grid] {
        &self.grids
    }
    /// The grid of group `g` in output `j`.
    pub fn group_grid(&self, g: usize, j: usize) -> Grid {
        self.grids[g * self.outputs + j]
    }
    /// The grid of input `i` in output `j`.
    pub fn grid(&self, i: usize, j: usize) -> Grid {
        self.group_grid(self.g_idx[i] as usize, j)
    }
    /// Group of each input (not monotone under act-order with dynamic groups).
    pub fn g_idx(&self) -> &[u32] {
        &self.g_idx
    }
    /// `Q`: `scale * (code - zero)` for every weight, in x out.
    pub fn dequantized(&self) -> MatRef<'_, f32> {
        self.dequantized.as_ref()
    }
    /// Takes `Q` out.
    pub fn into_dequantized(self) -> Mat<f32> {
        self.dequantized
    }
    /// `tr((W0 - Q)^T H (W0 - Q))` against the problem's target `W0`.
    pub fn layer_loss(&self) -> f64 {
        self.layer_loss
    }
}

/// The layer loss `tr((W0 - Q)^T H (W0 - Q)) = ||X (W0 - Q)||_F^2`: one `H D` product in
/// f32 with `D = W0 - Q` formed first (no cancellation between `H W0` and `H Q`), the
/// final inner product summed in f64.
///
/// # Errors
/// Shapes that do not agree (`W0` and `Q` in x out, `H` in x in).
pub fn layer_loss(
    w0: MatRef<'_, f32>,
    q: MatRef<'_, f32>,
    h: MatRef<'_, f32>,
    par: Par,
) -> Result<f64, QuantError> {
    check_shape("Q", q, w0.nrows(), w0.ncols())?;
    check_shape("H", h, w0.nrows(), w0.nrows())?;
    Ok(loss(w0, q, h, par))
}

fn loss(w0: MatRef<'_, f32>, q: MatRef<'_, f32>, h: MatRef<'_, f32>, par: Par) -> f64 {
    let d = Mat::<f32>::from_fn(w0.nrows(), w0.ncols(), |i, j| w0[(i, j)] - q[(i, j)]);
    let mut hd = Mat::<f32>::zeros(w0.nrows(), w0.ncols());
    matmul(hd.as_mut(), Accum::Replace, h, d.as_ref(), 1.0, par);
    (0..d.ncols())
        .map(|j| {
            let (dj, hdj) = (d.col_as_slice(j), hd.col_as_slice(j));
            dj.iter()
                .zip(hdj)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        })
        .sum()
}

/// A weight quantizer: rounds a layer's weights onto a grid, using `H` or not.
pub trait Quantizer {
    /// Quantizes one layer.
    ///
    /// # Errors
    /// Empty layers, shapes, non-finite entries, a group size that does not divide the
    /// inputs, a Hessian that damping does not make positive definite, parameters outside
    /// their domain.
    fn quantize(&self, problem: &LayerProblem<'_>) -> Result<QuantizedLinear, QuantError>;
}
