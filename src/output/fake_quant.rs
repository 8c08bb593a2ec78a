//! `fake-quant/`: the quantized model as an ordinary Hugging Face directory, its linear
//! weights the dequantized values `scale * (q - zero)` (which the pipeline writes into
//! the model), so that it loads wherever a float model loads.

use std::path::Path;

use llama_io::{LinearKind, Model, WeightDtype};
use quantizers::QuantizedLinear;

use super::{FormatState, OutputFormat};
use crate::error::PipelineError;

/// The fake-quant directory, float tensors in `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeQuantFormat {
    dtype: WeightDtype,
}

impl FakeQuantFormat {
    /// The format writing its tensors in `dtype`.
    pub fn new(dtype: WeightDtype) -> Self {
        FakeQuantFormat { dtype }
    }
}

impl OutputFormat for FakeQuantFormat {
    fn name(&self) -> &str {
        "fake-quant"
    }

    /// The model holds every quantized layer already: nothing to collect.
    fn layer_quantized(
        &mut self,
        _block: usize,
        _kind: LinearKind,
        _quantized: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        Ok(())
    }

    fn write(&self, model: &Model, dir: &Path) -> Result<Option<String>, PipelineError> {
        llama_io::write_hf_dir(model, dir, self.dtype, true)?;
        Ok(None)
    }

    /// Stateless: the run checkpoint keeps the model's weights itself.
    fn save_block(&self, _block: usize) -> Result<FormatState, PipelineError> {
        Ok(FormatState::default())
    }

    fn restore_block(&mut self, _block: usize, _state: FormatState) -> Result<(), PipelineError> {
        Ok(())
    }
}
