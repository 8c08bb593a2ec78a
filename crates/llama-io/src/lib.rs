#![doc = include_str!("../README.md")]

mod attention;
pub mod capture;
pub mod config;
pub mod data;
pub mod error;
mod forward;
pub mod gguf;
mod hf;
pub mod inspect;
pub mod linear;
mod model;
pub mod names;
pub mod perplexity;
mod softmax;
pub mod tokenizer;

pub use capture::{InputSink, XtxAccumulator, accumulate_xtx};
pub use config::LlamaConfig;
pub use error::{LlamaIoError, Result};
pub use hf::{
    PackedData, PackedLinears, PackedTensor, WeightDtype, write_hf_dir, write_packed_hf_dir,
};
pub use inspect::{Inventory, TensorSummary, inspect};
pub use linear::{LinearInput, LinearKind};
pub use model::{HostTensor, Model};
pub use names::TensorRole;
pub use perplexity::{PerplexityReport, perplexity, sample_calibration};
