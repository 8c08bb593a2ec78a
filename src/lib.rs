//! magr: post-training quantization of Llama-family models with MagR (weight magnitude
//! reduction, Zhang et al., NeurIPS 2024) in front of RTN, OPTQ and coordinate descent.
//!
//! This root package composes the workspace crates. [`quantize_model`] runs the
//! layer-wise pipeline on a [`llama_io::Model`]; its seams are one trait per kind of
//! extension, each with a registry that the CLI, the reports and the bench all read:
//!
//! - [`Preprocessor`] ([`PREPROCESSORS`]: MagR, the identity): what changes a layer's
//!   weights before quantization;
//! - [`Method`] ([`METHODS`]: RTN, OPTQ, OPTQ + coordinate descent): builds the quantizer;
//! - [`OutputFormat`] ([`FORMATS`]: fake-quant, GPTQ): receives each quantized layer,
//!   writes its directory, saves and restores its state for `--resume`;
//! - [`ComputeBackend`] ([`Cpu`], [`CandleBackend`]): where the heavy per-layer work runs.
//!
//! [`run`] holds the logic of a `magr quantize` run around the pipeline (staged output
//! directory, checkpoints, writing the outputs); [`RunCheckpoint`] saves each finished
//! block. The records (`report.json`) are [`magr_report`]'s types. The crates are
//! re-exported.

mod backend;
mod candle_backend;
mod checkpoint;
mod error;
mod gguf_preset;
mod hidden;
mod method;
mod output;
mod pipeline;
mod preprocess;
mod registry;
pub mod run;

pub use backend::{ComputeBackend, Cpu, HELD_OUT_EVERY, Windows};
pub use candle_backend::CandleBackend;
pub use checkpoint::{RunCheckpoint, run_fingerprint};
pub use error::PipelineError;
pub use gguf_preset::GgufPreset;
pub use hidden::{HiddenDtype, HiddenStates};
pub use method::{
    METHODS, Method, MethodEntry, MethodOptions, OptqCdMethod, OptqMethod, QuantizerContext,
    RtnMethod, method,
};
pub use output::{
    FORMATS, FakeQuantFormat, FormatContext, FormatEntry, FormatState, GGUF_FILE, GgufFormat,
    GptqFormat, OutputFormat, SavedBlock, output_format,
};
pub use pipeline::{
    BETA_CHOICES, PipelineObserver, PipelineSettings, PipelineState, Progress,
    continue_quantize_model, quantize_model,
};
pub use preprocess::{
    ALPHA_FACTORS, Alpha, HESSIAN_CHOICES, Identity, MagrHessian, MagrSettings, PREPROCESSORS,
    PreprocessContext, PreprocessOptions, Preprocessed, Preprocessor, PreprocessorEntry,
    preprocessor,
};

pub use atomic_fs;
pub use candle_core;
pub use l1_projection;
pub use llama_io;
pub use magr_report;
pub use prox_opt;
pub use quantizers;
