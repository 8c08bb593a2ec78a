//! Errors of the quantizers: each names the offending setting, shape or entry.

use faer::MatRef;

/// Why a layer could not be quantized, packed or unpacked. Nothing is produced when one
/// is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// Bit widths other than 2, 3, 4 and 8 are not supported.
    #[error("unsupported bit width {0}: use 2, 3, 4 or 8")]
    Bits(u32),
    /// Matrices whose shapes must agree do not.
    #[error(
        "shape mismatch: {what} is {actual_rows} x {actual_cols}, expected {expected_rows} x {expected_cols}"
    )]
    Shape {
        /// Which matrix.
        what: &'static str,
        /// Rows it should have.
        expected_rows: usize,
        /// Columns it should have.
        expected_cols: usize,
        /// Rows it has.
        actual_rows: usize,
        /// Columns it has.
        actual_cols: usize,
    },
    /// A buffer whose length is fixed by the shapes has another length.
    #[error("{what} has {actual} entries, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Entries it should have.
        expected: usize,
        /// Entries it has.
        actual: usize,
    },
    /// A NaN or infinite entry.
    #[error("{what} has a non-finite entry ({value}) at row {row}, column {col}")]
    NonFinite {
        /// Which matrix.
        what: &'static str,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The entry.
        value: f32,
    },
    /// A parameter outside its domain.
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// The damped Hessian is not positive definite: its Cholesky factorisation met a
    /// non-positive pivot at this input (original numbering).
    #[error(
        "the damped Hessian is not positive definite (non-positive pivot at input {input}); check H or increase the damping"
    )]
    NotPositiveDefinite {
        /// Input at which the factorisation failed.
        input: usize,
    },
    /// A code outside `0..2^bits`.
    #[error("code {code} at index {index} does not fit in {bits} bits")]
    Code {
        /// Position in the code buffer.
        index: usize,
        /// The code.
        code: u32,
        /// The bit width.
        bits: u32,
    },
    /// A zero point the GPTQ layout `format` cannot store in `bits` bits (v1 stores
    /// `zero - 1`, so `1..=2^bits`; v2 stores `zero`, so `0..2^bits`).
    #[error(
        "zero point {zero} of group {group}, output {output} cannot be stored in the GPTQ {format:?} layout at {bits} bits"
    )]
    ZeroPoint {
        /// Group of the grid.
        group: usize,
        /// Output channel of the grid.
        output: usize,
        /// The zero point.
        zero: u32,
        /// The bit width.
        bits: u32,
        /// The layout.
        format: crate::ZeroFormat,
    },
    /// A GGUF block format needs the input width (a GGUF row) to be a multiple of its
    /// blocks (32 weights; 256 for the K-quants).
    #[error("the input width {inputs} is not a multiple of {block}, the GGUF {ty} block size")]
    GgmlWidth {
        /// The layer's number of inputs.
        inputs: usize,
        /// The format.
        ty: crate::GgmlBlockType,
        /// Its weights per block.
        block: usize,
    },
    /// A layer packed as a GGUF format was not quantized on that format's grids.
    #[error("cannot pack as GGUF {expected}: the layer was quantized on {found}")]
    GgmlSpec {
        /// The requested format.
        expected: crate::GgmlBlockType,
        /// What the layer's grids are.
        found: String,
    },
    /// OPTQ's act-order with dynamic groups puts inputs far apart in one group, which a
    /// GGUF row (blocks of consecutive inputs) cannot store.
    #[error(
        "act-order with dynamic groups cannot be stored as GGUF {0}: a GGUF row cannot permute its inputs; turn act-order off (or use static groups)"
    )]
    GgmlActOrder(crate::GgmlBlockType),
    /// A GGUF block type name that is not one of the supported formats.
    #[error(
        "unknown GGUF block type {0:?}: use one of q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k"
    )]
    UnknownGgmlType(String),
}

pub(crate) fn check_shape(
    what: &'static str,
    m: MatRef<'_, f32>,
    rows: usize,
    cols: usize,
) -> Result<(), QuantError> {
    if m.nrows() == rows && m.ncols() == cols {
        Ok(())
    } else {
        Err(QuantError::Shape {
            what,
            expected_rows: rows,
            expected_cols: cols,
            actual_rows: m.nrows(),
            actual_cols: m.ncols(),
        })
    }
}

pub(crate) fn check_length(
    what: &'static str,
    actual: usize,
    expected: usize,
) -> Result<(), QuantError> {
    if actual == expected {
        Ok(())
    } else {
        Err(QuantError::Length {
            what,
            expected,
            actual,
        })
    }
}

pub(crate) fn check_finite(what: &'static str, m: MatRef<'_, f32>) -> Result<(), QuantError> {
    for col in 0..m.ncols() {
        for row in 0..m.nrows() {
            let value = m[(row, col)];
            if !value.is_finite() {
                return Err(QuantError::NonFinite {
                    what,
                    row,
                    col,
                    value,
                });
            }
        }
    }
    Ok(())
}
