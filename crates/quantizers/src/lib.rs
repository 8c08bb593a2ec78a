#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod cd;
mod error;
mod ggml;
mod grid;
mod kquant;
mod layer;
mod optq;
mod pack;
mod rtn;

pub use cd::{CoordinateDescent, SweepOrder, reference_lambda, refine};
pub use error::QuantError;
pub use ggml::{GgmlBlockType, GridFit, dequantize_ggml, pack_ggml};
pub use grid::{Grid, GridSpec, SubBlockScales, reference_beta};
pub use layer::{LayerProblem, QuantizedLinear, Quantizer, layer_loss};
pub use optq::{Optq, OptqSweep};
pub use pack::{
    GptqTensors, ZeroFormat, dequantize_gptq, pack_gptq, pack_qweight, pack_qzeros, unpack_qweight,
    unpack_qzeros,
};
pub use rtn::Rtn;
