//! Errors of the solvers and of MagR: each names the offending shape, value or setting.

/// Why a solve could not start. Nothing is computed when one is returned.
// The fields are self-describing; each variant's doc says what they name.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProxError {
    /// Two matrices whose shapes must agree do not.
    #[error(
        "shape mismatch: {what} is {actual_rows} x {actual_cols}, expected {expected_rows} x {expected_cols}"
    )]
    Shape {
        what: &'static str,
        expected_rows: usize,
        expected_cols: usize,
        actual_rows: usize,
        actual_cols: usize,
    },
    /// A matrix entry is NaN or infinite.
    #[error("{what} has a non-finite entry ({value}) at row {row}, column {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
        value: f32,
    },
    /// A parameter out of its domain (negative or non-finite weight, zero group size...).
    #[error("invalid parameter: {0}")]
    Parameter(String),
}

/// Checks that every entry of `m` is finite.
pub(crate) fn check_finite(what: &'static str, m: faer::MatRef<'_, f32>) -> Result<(), ProxError> {
    for col in 0..m.ncols() {
        for row in 0..m.nrows() {
            let value = m[(row, col)];
            if !value.is_finite() {
                return Err(ProxError::NonFinite {
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

/// Checks that `m` is `rows x cols`.
pub(crate) fn check_shape(
    what: &'static str,
    m: faer::MatRef<'_, f32>,
    rows: usize,
    cols: usize,
) -> Result<(), ProxError> {
    if m.nrows() == rows && m.ncols() == cols {
        Ok(())
    } else {
        Err(ProxError::Shape {
            what,
            expected_rows: rows,
            expected_cols: cols,
            actual_rows: m.nrows(),
            actual_cols: m.ncols(),
        })
    }
}
