//! Round to nearest.

use faer::Par;

use crate::{GridFit, GridSpec, LayerProblem, QuantError, QuantizedLinear, Quantizer};

/// Round to nearest: fit each (group, channel) grid to its weights and round each weight
/// to its grid. `H` is used only for the reported loss, and by a weighted fit
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
        let gs = self.spec.group_rows(n)?;
        let groups = n / gs;
        let mut codes = vec![0u8; n * m];
        let mut grids = vec![self.spec.fit([]); groups * m];
        let weighted = self.spec.grid_fit() == GridFit::Weighted;
        let diag: Vec<f32> = if weighted {
            (0..n).map(|i| problem.hessian[(i, i)].max(0.0)).collect()
        } else {
            Vec::new()
        };
        let mut buffer = Vec::new();
        for j in 0..m {
            let column = contiguous(w.col(j), &mut buffer);
            let codes_j = &mut codes[j * n..(j + 1) * n];
            for (g, (values, out)) in column.chunks(gs).zip(codes_j.chunks_mut(gs)).enumerate() {
                let grid = if weighted {
                    self.spec.fit_weighted(values, &diag[g * gs..(g + 1) * gs])
                } else {
                    self.spec.fit(values.iter().copied())
                };
                for (c, &x) in out.iter_mut().zip(values) {
                    *c = grid.code(x) as u8;
                }
                grids[g * m + j] = grid;
            }
        }
        let g_idx = (0..n).map(|i| (i / gs) as u32).collect();
        Ok(QuantizedLinear::assemble(
            self.spec, codes, grids, g_idx, problem, self.par,
        ))
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
