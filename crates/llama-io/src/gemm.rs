//! Matrix products of candle tensors that every candle device takes.
//!
//! candle's CPU backend multiplies operands of any layout, its CUDA backend only those
//! that cuBLAS's strided batched GEMM reads as they are, and refuses the others at run
//! time ("matmul is only supported for contiguous tensors"). Every product of the
//! device code goes through [`gemm`], so a layout that the GPU would refuse is copied
//! on every device, and the tests on the CPU device run the code the GPU runs.

use candle_core::{Result, Tensor};

/// `a.matmul(b)`, each operand first made contiguous unless cuBLAS reads its layout as
/// it is ([`blas_layout`]).
pub fn gemm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ready = |t: &Tensor| {
        if blas_layout(t) {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    ready(a)?.matmul(&ready(b)?)
}

/// Whether cuBLAS reads `t` as it is (candle-core 0.11's `gemm_config` rule): each
/// batch entry a dense row-major or column-major matrix (a dimension of size 1 may have
/// any stride), and at most two batch dimensions that one stride walks.
pub fn blas_layout(t: &Tensor) -> bool {
    let (dims, stride) = (t.dims(), t.stride());
    let r = dims.len();
    if r < 2 {
        return t.is_contiguous();
    }
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (s_row, s_col) = (stride[r - 2], stride[r - 1]);
    let row_major = (s_col == 1 || cols == 1) && (s_row == cols || rows == 1);
    let column_major = (s_col == rows || cols == 1) && (s_row == 1 || rows == 1);
    let batch = match (&dims[..r - 2], &stride[..r - 2]) {
        ([], []) | ([_], [_]) => true,
        ([d0, d1], [s0, s1]) => *s0 == s1 * d1 || *d0 == 1 || *d1 == 1,
        _ => false,
    };
    (row_major || column_major) && batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    /// `m` as a row-major `rows x cols` tensor of distinct values.
    fn matrix(rows: usize, cols: usize, seed: f32) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 + seed) * 0.37).sin())
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    /// The product by the textbook triple loop in f64.
    fn naive(a: &Tensor, b: &Tensor) -> Vec<Vec<f64>> {
        let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        (0..a.len())
            .map(|i| {
                (0..b[0].len())
                    .map(|j| (0..b.len()).map(|k| f64::from(a[i][k] * b[k][j])).sum())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_layout_the_gpu_refused_is_recognised() {
        // OPTQ's later columns of U: a column range of a 128 x 160 matrix.
        let u = matrix(128, 160, 0.0);
        let later = u.narrow(1, 128, 32).unwrap();
        assert!(!blas_layout(&later));
        assert!(blas_layout(&later.contiguous().unwrap()));
        assert!(blas_layout(&u.t().unwrap()), "a transpose is read as it is");
        assert!(blas_layout(&u.narrow(0, 3, 5).unwrap()), "a row range too");
        // Keys of one query chunk, transposed: [b, heads, hd, len] of a [b, heads, t, hd].
        let k = Tensor::zeros((2, 3, 10, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(blas_layout(&k.narrow(2, 0, 6).unwrap().t().unwrap()));
        assert!(!blas_layout(&k.narrow(3, 0, 2).unwrap()));
    }

    proptest! {
        /// Any column and row ranges, transposed or not: the product of the exact one,
        /// to f32 rounding of sums of at most 40 terms of size 1.
        #[test]
        fn gemm_of_any_view_is_the_product(
            (m, k, n) in (1usize..12, 1usize..40, 1usize..12),
            (pad_a, pad_b) in (0usize..5, 0usize..5),
            (transpose_a, transpose_b) in (any::<bool>(), any::<bool>()),
        ) {
            let view = |rows: usize, cols: usize, pad: usize, transpose: bool, seed: f32| {
                if transpose {
                    matrix(cols + pad, rows, seed).narrow(0, pad, cols).unwrap().t().unwrap()
                } else {
                    matrix(rows, cols + pad, seed).narrow(1, pad, cols).unwrap()
                }
            };
            let a = view(m, k, pad_a, transpose_a, 0.5);
            let b = view(k, n, pad_b, transpose_b, 1.5);
            let product = gemm(&a, &b).unwrap().to_vec2::<f32>().unwrap();
            for (got, want) in product.iter().flatten().zip(naive(&a, &b).iter().flatten()) {
                prop_assert!((f64::from(*got) - want).abs() <= 1e-5 * k as f64, "{got} {want}");
            }
        }
    }
}
