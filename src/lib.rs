//! magr: post-training quantization of Llama-family models with MagR (weight magnitude
//! reduction, Zhang et al., NeurIPS 2024) in front of RTN, OPTQ and coordinate descent.
//!
//! This root package composes the workspace crates: [`quantize_model`] runs the
//! layer-wise pipeline on a [`llama_io::Model`], with MagR ([`prox_opt::magr`]) and a
//! quantizer from [`quantizers`] per linear layer, reporting to a [`PipelineObserver`];
//! [`RunCheckpoint`] saves each finished block so that [`continue_quantize_model`] can
//! resume a killed run; [`GptqCheckpoint`] collects the packed layers and writes the GPTQ
//! checkpoint. The crates are re-exported.

mod checkpoint;
mod error;
mod gptq;
mod pipeline;

pub use checkpoint::{RunCheckpoint, run_fingerprint};
pub use error::PipelineError;
pub use gptq::GptqCheckpoint;
pub use pipeline::{
    LayerRecord, MagnitudeHistogram, MagrHessian, MagrRecord, MagrSettings, Method,
    PipelineObserver, PipelineReport, PipelineSettings, PipelineState, Progress, StageSeconds,
    continue_quantize_model, quantize_model,
};

pub use l1_projection;
pub use llama_io;
pub use prox_opt;
pub use quantizers;
