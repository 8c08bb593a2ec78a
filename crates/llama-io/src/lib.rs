#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// Modules in dependency order: each uses only modules above it (the README's
// "Module order" lists what each one uses).
// Foundations.
pub mod error;
// GGUF's Q/K row order (uses error).
mod qk_order;
// Tensors left in their safetensors or GGUF files (uses error, qk_order).
pub mod stored;
// Host views of tensors; rayon loops that follow a `Par`.
mod host;
// Vectorised kernels.
mod softmax;
// Descriptions of a model.
pub mod config;
// (uses config)
pub mod linear;
// (uses config, linear)
pub mod names;
// Files around a model.
pub mod data;
// (uses error)
pub mod tokenizer;
// The weights.
mod model;
// The tokenizer files of a Hugging Face directory (uses model, tokenizer).
mod hf_tokenizer;
// Readers and the writer (use model, hf_tokenizer).
mod hf;
// GGML types and the checked GGUF header (uses error).
mod gguf_header;
// (uses gguf_header)
pub mod inspect;
// (uses model, names, tokenizer, gguf_header)
pub mod gguf;
// The GGUF writer (uses model, names, tokenizer, gguf).
pub mod gguf_writer;
// Random models of any shape (uses config, names, hf).
pub mod generate;
// `Model::load` (uses hf, gguf).
mod load;
// The forward pass.
mod attention;
// (uses host, config, linear)
pub mod capture;
// (uses model, attention, capture)
mod forward;
// (uses forward)
pub mod gemm;

pub mod perplexity;
// (uses model, linear, names)
pub mod rotate;
// (uses host, softmax, forward, perplexity)
pub mod compare;

pub use capture::{InputSink, XtxAccumulator, accumulate_xtx};
pub use compare::{Comparison, LayerDivergence, compare};
pub use config::LlamaConfig;
pub use error::{LlamaIoError, Result};
pub use gguf_writer::{
    EncodedBytes, EncodedLinear, GgufFloat, GgufLinears, GgufOptions, check_gguf, write_gguf,
};
pub use hf::{
    DirExtras, ExtraTensor, MAX_SHARD_BYTES, MakeTensor, NamedTensor, TensorData, WeightDtype,
    write_hf_dir, write_hf_dir_sharded, write_hf_dir_with,
};
pub use inspect::{Inventory, TensorSummary, inspect};
pub use linear::{LinearInput, LinearKind};
pub use model::{HostTensor, Model, NamedValues};
pub use names::TensorRole;
pub use perplexity::{PerplexityReport, perplexity, perplexity_from, sample_calibration};
pub use stored::{StoredTensor, stored_tensors, stored_tensors_and_metadata};
pub use tokenizer::TokenizerSource;
