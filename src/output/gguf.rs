//! `gguf/model.gguf`: the quantized model as a GGUF file that llama.cpp runs, each
//! linear layer stored in the legacy block format (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`,
//! `Q8_0`) whose grid the layers were quantized on, so the file holds exactly the
//! optimised weights: llama.cpp dequantizes each block to the fake-quant weights, bit for
//! bit. Embeddings, norms and head are written in float ([`FormatContext::gguf_float`]),
//! Q/K rows in llama.cpp's RoPE order, the tokenizer metadata from the input (llama-io's
//! [`llama_io::write_gguf`]).

use std::path::Path;

use candle_core::quantized::GgmlDType;
use llama_io::{
    EncodedLinear, GgufLinears, GgufOptions, LinearKind, Model, NamedTensor, TensorData,
};
use quantizers::{GgmlBlockType, QuantizedLinear, pack_ggml};

use super::{FormatContext, FormatState, OutputFormat};
use crate::error::PipelineError;

/// The file written in the format's directory.
pub const GGUF_FILE: &str = "model.gguf";

/// The encoded layers of a run, collected as the pipeline quantizes them.
#[derive(Debug, Clone)]
pub struct GgufFormat {
    ty: GgmlBlockType,
    /// candle's type of the same ggml type id (what the writer is told).
    dtype: GgmlDType,
    context: FormatContext,
    /// The encoded layers, kept in the form the writer takes (no copy when writing).
    layers: GgufLinears,
}

/// llama.cpp's `llama_ftype` of a file whose linear layers are all `ty`
/// (`general.file_type`).
fn file_type(ty: GgmlBlockType) -> u32 {
    match ty {
        GgmlBlockType::Q4_0 => 2,
        GgmlBlockType::Q4_1 => 3,
        GgmlBlockType::Q8_0 => 7,
        GgmlBlockType::Q5_0 => 8,
        GgmlBlockType::Q5_1 => 9,
    }
}

impl GgufFormat {
    /// The GGUF format of a run, whose grids must be a GGUF block format.
    ///
    /// # Errors
    /// Grids that are not a GGUF block format (`--gguf-type` was not given).
    pub fn new(context: &FormatContext) -> Result<Self, PipelineError> {
        let ty = context.spec.ggml_type().ok_or_else(|| {
            PipelineError::Settings(
                "the gguf format stores layers quantized on a GGUF block grid: pass \
                 --gguf-type (q4_0, q4_1, q5_0, q5_1 or q8_0)"
                    .into(),
            )
        })?;
        let dtype = llama_io::gguf::READABLE_TYPES
            .into_iter()
            .find(|&d| llama_io::gguf::ggml_type_id(d) == ty.type_id())
            .ok_or_else(|| PipelineError::Settings(format!("{ty}: not a type candle reads")))?;
        Ok(GgufFormat {
            ty,
            dtype,
            context: *context,
            layers: GgufLinears::new(),
        })
    }

    /// The writer's options: the file type of the block format, the float type asked for.
    fn options(&self) -> GgufOptions {
        GgufOptions {
            file_type: Some(file_type(self.ty)),
            float: self.context.gguf_float,
            ..GgufOptions::default()
        }
    }

    fn insert(&mut self, block: usize, kind: LinearKind, data: Vec<u8>) {
        let dtype = self.dtype;
        self.layers
            .insert((block, kind), EncodedLinear { dtype, data });
    }

    /// The encoded rows of layer `kind` of `block`, if it is there.
    pub fn layer(&self, block: usize, kind: LinearKind) -> Option<&[u8]> {
        self.layers.get(&(block, kind)).map(|l| l.data.as_slice())
    }
}

impl OutputFormat for GgufFormat {
    fn name(&self) -> &str {
        "gguf"
    }

    /// The tokenizer converts to GGUF metadata.
    fn check(&self, model: &Model) -> Result<(), PipelineError> {
        llama_io::check_gguf(model, &self.options())
            .map_err(|e| PipelineError::Settings(format!("the gguf format: {e}")))
    }

    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        q: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        let bytes = pack_ggml(q, self.ty)
            .map_err(|e| PipelineError::Output(format!("{}: {e}", kind.hf_name(block))))?;
        self.insert(block, kind, bytes);
        Ok(())
    }

    fn write(&self, model: &Model, dir: &Path) -> Result<Option<String>, PipelineError> {
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                if self.layer(block, kind).is_none() {
                    return Err(PipelineError::Output(format!(
                        "{} was not quantized",
                        kind.hf_name(block)
                    )));
                }
            }
        }
        let options = self.options();
        atomic_fs::write_dir(dir, true, |staged| -> Result<(), PipelineError> {
            llama_io::write_gguf(model, &staged.join(GGUF_FILE), &options, &self.layers)?;
            Ok(())
        })?;
        Ok(Some(format!(
            "GGUF file with {} linear layers in {}",
            self.layers.len(),
            self.ty
        )))
    }

    /// The encoded rows of `block`'s layers (one `U8` tensor per layer).
    fn save_block(&self, block: usize) -> Result<FormatState, PipelineError> {
        let mut state = FormatState::default();
        for kind in LinearKind::ALL {
            let bytes = self.layer(block, kind).ok_or_else(|| {
                PipelineError::Output(format!("{} was not encoded", kind.hf_name(block)))
            })?;
            state.tensors.push(NamedTensor {
                name: kind.hf_suffix().to_string(),
                shape: vec![bytes.len()],
                data: TensorData::U8(bytes.to_vec()),
            });
        }
        Ok(state)
    }

    fn restore_block(&mut self, block: usize, mut state: FormatState) -> Result<(), PipelineError> {
        let mut tensors = state.tensors_by_name();
        for kind in LinearKind::ALL {
            match tensors.remove(kind.hf_suffix()) {
                Some(NamedTensor {
                    data: TensorData::U8(bytes),
                    ..
                }) => self.insert(block, kind, bytes),
                _ => {
                    return Err(PipelineError::Output(format!(
                        "{}: no encoded GGUF rows in the checkpoint",
                        kind.hf_name(block)
                    )));
                }
            }
        }
        Ok(())
    }
}
