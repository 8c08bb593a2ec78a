//! The pipeline's error: each variant names the block, layer, file or setting.

use llama_io::LinearKind;

/// Why a quantization run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading, running or writing the model.
    #[error(transparent)]
    Model(#[from] llama_io::LlamaIoError),
    /// MagR refused its problem.
    #[error("MagR: {0}")]
    Magr(#[from] prox_opt::ProxError),
    /// The quantizer refused its problem.
    #[error("quantizer: {0}")]
    Quantizer(#[from] quantizers::QuantError),
    /// A tensor operation of the forward pass.
    #[error("tensor operation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Calibration data that cannot be used.
    #[error("calibration: {0}")]
    Calibration(String),
    /// Settings that contradict each other or the model.
    #[error("settings: {0}")]
    Settings(String),
    /// An output that cannot be written.
    #[error("output: {0}")]
    Output(String),
    /// A file or directory that cannot be written, named.
    #[error("output: {0}")]
    Write(#[from] atomic_fs::Error),
    /// Another error, in this block and layer.
    #[error("block {block}, {layer}: {source}")]
    InLayer {
        /// Decoder block.
        block: usize,
        /// Layer name (`q_proj`, ...).
        layer: &'static str,
        /// What went wrong.
        source: Box<PipelineError>,
    },
}

impl PipelineError {
    /// This error, located in `block`'s layer `kind`.
    pub(crate) fn in_layer(self, block: usize, kind: LinearKind) -> Self {
        Self::InLayer {
            block,
            layer: kind.hf_suffix(),
            source: Box::new(self),
        }
    }
}
