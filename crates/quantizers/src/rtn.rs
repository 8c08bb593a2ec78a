//! Round to nearest.

use faer::Par;

use crate::{Grid, GridSpec, LayerProblem, QuantError, QuantizedLinear, Quantizer};

/// Round to nearest: fit each (group, channel) grid to its weights (a K-quant
/// super-block's grids together, [`GridSpec::fit_span_grids`]) and round each weight to
/// its grid. `H` is used only for the reported loss, and by a weighted fit
/// ([`crate::GridFit::Weighted`]), whose weights are `H_ii` of the group's inputs.
#[derive(Debug, Clone, Copy)]
pub struct Rtn {
    /// The grid family.
    pub spec: GridSpec,
    /// Parallelism of the loss product.
    pub par: Par,
}

impl Rtn {
    /// RTN on this grid family, parallel loss product.
    pub fn new(spec: GridSpec) -> Self {
        Self {
            spec,
            par: Par::rayon(0),
        }
    }
}

impl Quantizer for Rtn {
    fn quantize(&self, problem: &LayerProblem<'_>) -> Result<QuantizedLinear, QuantError> {
        problem.validate()?;
        let w = problem.weights;
        let (n, m) = (w.nrows(), w.ncols());
        let (gs, groups) = (self.spec.group_rows(n)?, self.spec.groups(n)?);
        let span = self.spec.fit_span(n)?;
        let per_span = span / gs;
        let diag: Vec<f32> = (0..n).map(|i| problem.hessian[(i, i)].max(0.0)).collect();
        // Per output: its codes and its grids in group order.
        let columns = map_outputs(self.par, m, |j| {
            let mut buffer = Vec::new();
            let column = contiguous(w.col(j), &mut buffer);
            let mut codes = vec![0u8; n];
            let mut grids = vec![Grid::default(); groups];
            for (s, (values, out)) in column.chunks(span).zip(codes.chunks_mut(span)).enumerate() {
                let weights = &diag[s * span..s * span + values.len()];
                let first = s * per_span;
                let span_grids = &mut grids[first..first + values.len().div_ceil(gs)];
                self.spec.fit_span_grids(values, weights, span_grids);
                for (k, (c, &x)) in out.iter_mut().zip(values).enumerate() {
                    *c = span_grids[k / gs].code(x) as u8;
                }
            }
            (codes, grids)
        });
        let mut codes = Vec::with_capacity(n * m);
        let mut grids = vec![Grid::default(); groups * m];
        for (j, (codes_j, grids_j)) in columns.into_iter().enumerate() {
            codes.extend(codes_j);
            for (g, grid) in grids_j.into_iter().enumerate() {
                grids[g * m + j] = grid;
            }
        }
        let g_idx = (0..n).map(|i| (i / gs) as u32).collect();
        Ok(QuantizedLinear::assemble(
            self.spec, codes, grids, g_idx, problem, self.par,
        ))
    }
}

/// `f` of every output `0..m`, in order, on rayon's threads unless `par` is
/// [`Par::Seq`] (the outputs of a layer are fitted independently).
pub(crate) fn map_outputs<T: Send>(par: Par, m: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    match par {
        Par::Seq => (0..m).map(f).collect(),
        Par::Rayon(_) => (0..m).into_par_iter().map(&f).collect(),
    }
}

/// The column as a slice: borrowed when its entries are contiguous, else copied.
pub(crate) fn contiguous<'a>(col: faer::ColRef<'a, f32>, buffer: &'a mut Vec<f32>) -> &'a [f32] {
    match col.try_as_col_major() {
        Some(c) => c.as_slice(),
        None => {
            buffer.clear();
            buffer.extend(col.iter().copied());
            buffer
        }
    }
}
