//! `gguf/model.gguf`: the quantized model as a GGUF file that llama.cpp runs, each
//! linear layer stored in the GGUF block format whose grids it was quantized on (one type
//! for the whole model, or per layer under a llama.cpp preset such as `q4_k_m`), so the
//! file holds exactly the optimised weights: llama.cpp dequantizes each block to the
//! fake-quant weights, bit for bit. Embeddings, norms and head are written in float
//! ([`FormatContext::gguf_float`]), Q/K rows in llama.cpp's RoPE order, the tokenizer
//! metadata from the input (llama-io's [`llama_io::write_gguf`]).

use std::path::Path;

use candle_core::quantized::GgmlDType;
use llama_io::{
    EncodedBytes, EncodedLinear, GgufLinears, GgufOptions, LinearKind, Model, NamedTensor,
    TensorData,
};
use quantizers::{GgmlBlockType, QuantizedLinear, pack_ggml};

use super::{FormatContext, FormatState, OutputFormat, SavedBlock};
use crate::error::PipelineError;

/// The file written in the format's directory.
pub const GGUF_FILE: &str = "model.gguf";

/// The encoded layers of a run, collected as the pipeline quantizes them.
#[derive(Debug, Clone)]
pub struct GgufFormat {
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    file_type: u32,
    /// What the directory holds, for the summary line.
    description: String,
    context: FormatContext,
    /// The encoded layers, kept in the form the writer takes (no copy when writing).
    layers: GgufLinears,
}

/// llama.cpp's `llama_ftype` of a file whose linear layers are all `ty`
/// (`general.file_type`; a K-quant's is the `_S` preset's, the closest llama.cpp has).
fn file_type(ty: GgmlBlockType) -> u32 {
    match ty {
        GgmlBlockType::Q4_0 => 2,
        GgmlBlockType::Q4_1 => 3,
        GgmlBlockType::Q8_0 => 7,
        GgmlBlockType::Q5_0 => 8,
        GgmlBlockType::Q5_1 => 9,
        GgmlBlockType::Q2_K => 10,
        GgmlBlockType::Q3_K => 11,
        GgmlBlockType::Q4_K => 14,
        GgmlBlockType::Q5_K => 16,
        GgmlBlockType::Q6_K => 18,
    }
}

/// candle's type of the same ggml type id (what the writer is told).
fn candle_dtype(ty: GgmlBlockType) -> Result<GgmlDType, PipelineError> {
    llama_io::gguf::READABLE_TYPES
        .into_iter()
        .find(|&d| llama_io::gguf::ggml_type_id(d) == ty.type_id())
        .ok_or_else(|| PipelineError::Settings(format!("{ty}: not a type candle reads")))
}

impl GgufFormat {
    /// The GGUF format of a run, whose grids must be a GGUF block format.
    ///
    /// # Errors
    /// Grids that are not a GGUF block format (`--gguf-type` was not given).
    pub fn new(context: &FormatContext) -> Result<Self, PipelineError> {
        let ty = context.spec.ggml_type().ok_or_else(|| {
            PipelineError::Settings(format!(
                "the gguf format stores layers quantized on a GGUF block grid: pass \
                 --gguf-type ({})",
                GgmlBlockType::LEGACY
                    .map(|t| t.name())
                    .into_iter()
                    .chain(crate::GgufPreset::ALL.map(|p| p.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        candle_dtype(ty)?;
        let (file_type, description) = match context.gguf_preset {
            Some(preset) => (preset.file_type(), format!("llama.cpp's {preset} mixture")),
            None => (file_type(ty), ty.to_string()),
        };
        Ok(GgufFormat {
            file_type,
            description,
            context: *context,
            layers: GgufLinears::new(),
        })
    }

    /// The writer's options: the file type of the block format, the float type asked for.
    fn options(&self) -> GgufOptions {
        GgufOptions {
            file_type: Some(self.file_type),
            float: self.context.gguf_float,
            ..GgufOptions::default()
        }
    }

    fn insert(
        &mut self,
        block: usize,
        kind: LinearKind,
        ty: GgmlBlockType,
        data: Vec<u8>,
    ) -> Result<(), PipelineError> {
        let dtype = candle_dtype(ty)?;
        let data = data.into();
        self.layers
            .insert((block, kind), EncodedLinear { dtype, data });
        Ok(())
    }

    /// The encoded rows of layer `kind` of `block`, if it is there (read from the run
    /// checkpoint once released there).
    ///
    /// # Errors
    /// A failed read, naming the file.
    pub fn layer(&self, block: usize, kind: LinearKind) -> Result<Option<Vec<u8>>, PipelineError> {
        match self.layers.get(&(block, kind)) {
            Some(l) => Ok(Some(l.data.read()?.into_owned())),
            None => Ok(None),
        }
    }

    /// How many encoded layers are held in memory (the others are left in the run
    /// checkpoint).
    pub fn layers_in_memory(&self) -> usize {
        (self.layers.values())
            .filter(|l| matches!(l.data, EncodedBytes::Memory(_)))
            .count()
    }

    /// Every encoded layer so far, as [`llama_io::write_gguf`] takes them.
    pub fn encoded(&self) -> &GgufLinears {
        &self.layers
    }

    /// The GGUF type of layer `kind` of `block`, if it is there.
    pub fn layer_type(&self, block: usize, kind: LinearKind) -> Option<GgmlBlockType> {
        let id = llama_io::gguf::ggml_type_id(self.layers.get(&(block, kind))?.dtype);
        GgmlBlockType::ALL.into_iter().find(|t| t.type_id() == id)
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
        let name = kind.hf_name(block);
        let ty = q.spec().ggml_type().ok_or_else(|| {
            PipelineError::Output(format!("{name}: not quantized on a GGUF block grid"))
        })?;
        let bytes = pack_ggml(q, ty).map_err(|e| PipelineError::Output(format!("{name}: {e}")))?;
        self.insert(block, kind, ty, bytes)
    }

    fn write(&self, model: &Model, dir: &Path) -> Result<Option<String>, PipelineError> {
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                if !self.layers.contains_key(&(block, kind)) {
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
            self.description
        )))
    }

    /// The encoded rows of `block`'s layers (one `U8` tensor per layer) and their types
    /// (metadata under the layer's name).
    fn save_block(&self, block: usize) -> Result<FormatState, PipelineError> {
        let mut state = FormatState::default();
        for kind in LinearKind::ALL {
            let (bytes, ty) = self
                .layer(block, kind)?
                .zip(self.layer_type(block, kind))
                .ok_or_else(|| {
                    PipelineError::Output(format!("{} was not encoded", kind.hf_name(block)))
                })?;
            state
                .metadata
                .insert(kind.hf_suffix().to_string(), ty.name().to_string());
            state.tensors.push(NamedTensor {
                name: kind.hf_suffix().to_string(),
                shape: vec![bytes.len()],
                data: TensorData::U8(bytes),
            });
        }
        Ok(state)
    }

    fn restore_block(&mut self, block: usize, mut state: FormatState) -> Result<(), PipelineError> {
        let mut tensors = state.tensors_by_name();
        for kind in LinearKind::ALL {
            let ty = state
                .metadata
                .get(kind.hf_suffix())
                .and_then(|name| name.parse::<GgmlBlockType>().ok());
            match (tensors.remove(kind.hf_suffix()), ty) {
                (
                    Some(NamedTensor {
                        data: TensorData::U8(bytes),
                        ..
                    }),
                    Some(ty),
                ) => self.insert(block, kind, ty, bytes)?,
                _ => {
                    return Err(PipelineError::Output(format!(
                        "{}: no encoded GGUF rows (or their type) in the checkpoint",
                        kind.hf_name(block)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Each layer's rows are left in the checkpoint file (same type and length, or an
    /// error naming the layer).
    fn release_block(&mut self, block: usize, saved: SavedBlock) -> Result<(), PipelineError> {
        for kind in LinearKind::ALL {
            let name = kind.hf_name(block);
            let stored = saved.tensor(kind.hf_suffix(), &name)?;
            let same_type = saved.metadata.get(kind.hf_suffix()).map(String::as_str)
                == self.layer_type(block, kind).map(|t| t.name());
            let layer = self.layers.get_mut(&(block, kind));
            match layer {
                Some(l) if same_type && l.data.len() == stored.byte_len() => {
                    l.data = EncodedBytes::Stored(stored.clone());
                }
                _ => {
                    return Err(PipelineError::Output(format!(
                        "{name}: the checkpoint's encoded rows are not the ones made in this run"
                    )));
                }
            }
        }
        Ok(())
    }
}
