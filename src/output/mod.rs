//! Output formats: what `magr quantize --out DIR` writes besides the reports, one
//! subdirectory per format (`DIR/fake-quant/`, `DIR/gptq/`).
//!
//! An [`OutputFormat`] receives each quantized layer (codes, grids, dequantized weights)
//! as the pipeline produces it, writes its directory from those layers and the finished
//! model (atomically: a temporary sibling, then a rename), and saves and restores its own
//! state per block so that `--resume` gives the same bytes. [`FORMATS`] is the one list
//! (the CLI's `--formats` reads it): adding a format means implementing [`OutputFormat`]
//! and adding one [`FormatEntry`].

mod fake_quant;
mod gguf;
mod gptq;

use std::collections::BTreeMap;
use std::path::Path;

use llama_io::{GgufFloat, LinearKind, Model, NamedTensor, StoredTensor, WeightDtype};
use quantizers::{GridSpec, QuantizedLinear};

use crate::error::PipelineError;
use crate::gguf_preset::GgufPreset;
use crate::registry;

pub use fake_quant::FakeQuantFormat;
pub use gguf::{GGUF_FILE, GgufFormat};
pub use gptq::GptqFormat;

/// What a format knows of the run that feeds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FormatContext {
    /// The grid family of every layer (under a GGUF preset, the preset's default type).
    pub spec: GridSpec,
    /// The llama.cpp preset choosing each layer's GGUF type, if any.
    pub gguf_preset: Option<GgufPreset>,
    /// OPTQ's act-order (GPTQ's `desc_act`).
    pub act_order: bool,
    /// The relative damping of `H` of the quantizer, if it uses `H` (GPTQ's `damp_percent`).
    pub damping: Option<f64>,
    /// Storage type of the float tensors of Hugging Face directories.
    pub dtype: WeightDtype,
    /// Storage type of the float tensors of GGUF files.
    pub gguf_float: GgufFloat,
}

/// A format's state after a block, as a run checkpoint stores it: tensors and text
/// entries, under names of the format's choosing.
#[derive(Debug, Default)]
pub struct FormatState {
    /// Tensors.
    pub tensors: Vec<NamedTensor>,
    /// Text entries.
    pub metadata: BTreeMap<String, String>,
}

impl FormatState {
    /// The tensors by name (the last of a repeated name wins).
    pub fn tensors_by_name(&mut self) -> BTreeMap<String, NamedTensor> {
        std::mem::take(&mut self.tensors)
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect()
    }
}

/// A format's state of one block as a run checkpoint's block file holds it, left in the
/// file: the tensors of its [`FormatState`] (read when used) and its text entries, under
/// the same names.
#[derive(Debug, Clone, Default)]
pub struct SavedBlock {
    /// Tensors, by name.
    pub tensors: BTreeMap<String, StoredTensor>,
    /// Text entries.
    pub metadata: BTreeMap<String, String>,
}

impl SavedBlock {
    /// The tensor `name`.
    ///
    /// # Errors
    /// No such tensor, naming it and `what` it is.
    pub fn tensor(&self, name: &str, what: &str) -> Result<&StoredTensor, PipelineError> {
        self.tensors
            .get(name)
            .ok_or_else(|| PipelineError::Output(format!("{what}: no `{name}` in the checkpoint")))
    }

    /// Everything read into memory.
    ///
    /// # Errors
    /// Failed reads and tensors of other dtypes than U8, I32, F16 and F32, naming the
    /// file and tensor.
    pub fn read(&self) -> Result<FormatState, PipelineError> {
        let tensors = (self.tensors.iter())
            .map(|(name, t)| {
                Ok(NamedTensor {
                    name: name.clone(),
                    ..NamedTensor::read(t)?
                })
            })
            .collect::<Result<_, PipelineError>>()?;
        Ok(FormatState {
            tensors,
            metadata: self.metadata.clone(),
        })
    }
}

/// A model format written under the output directory.
pub trait OutputFormat: Send {
    /// Its name: the `--formats` value and the subdirectory it writes.
    fn name(&self) -> &str;

    /// Whether it can store `model` at all, checked before any work (a tokenizer it
    /// cannot write, for instance).
    ///
    /// # Errors
    /// What it cannot store, named.
    fn check(&self, _model: &Model) -> Result<(), PipelineError> {
        Ok(())
    }

    /// Layer `kind` of `block` is quantized as `quantized`.
    ///
    /// # Errors
    /// A layer the format cannot store, named.
    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        quantized: &QuantizedLinear,
    ) -> Result<(), PipelineError>;

    /// Writes the directory `dir` for `model`, whose every linear layer is quantized,
    /// atomically (replacing whatever a failed earlier attempt left at `dir`); returns a
    /// line worth telling the user, if any.
    ///
    /// # Errors
    /// A layer never quantized, and write errors naming the file.
    fn write(&self, model: &Model, dir: &Path) -> Result<Option<String>, PipelineError>;

    /// Its state for the finished `block`, for a run checkpoint.
    ///
    /// # Errors
    /// A layer of `block` that it never received.
    fn save_block(&self, block: usize) -> Result<FormatState, PipelineError>;

    /// Restores what [`OutputFormat::save_block`] saved for `block`.
    ///
    /// # Errors
    /// A state it cannot read, named.
    fn restore_block(&mut self, block: usize, state: FormatState) -> Result<(), PipelineError>;

    /// What [`OutputFormat::save_block`] gave for `block` is now in a run checkpoint's
    /// file, `saved`: the format may drop its own copy and read the block from there
    /// when it writes (the checkpoint outlives [`OutputFormat::write`]). The default
    /// keeps its copy.
    ///
    /// # Errors
    /// A saved state that does not match the format's, named.
    fn release_block(&mut self, _block: usize, _saved: SavedBlock) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// A registered format: its name, a line of help, whether `--formats` includes it by
/// default, and how to build it for a run.
#[derive(Debug, Clone, Copy)]
pub struct FormatEntry {
    /// The name (`--formats NAME`, and the subdirectory).
    pub name: &'static str,
    /// One line of help.
    pub about: &'static str,
    /// Written unless `--formats` says otherwise.
    pub default: bool,
    /// The format for a run.
    ///
    /// # Errors
    /// A run whose settings the format cannot store (named, before any work).
    pub build: fn(&FormatContext) -> Result<Box<dyn OutputFormat>, PipelineError>,
}

/// Every format, in the order the CLI lists them.
pub static FORMATS: &[FormatEntry] = &[
    FormatEntry {
        name: "fake-quant",
        about: "a Hugging Face directory with the dequantized weights (loads wherever a float model loads)",
        default: true,
        build: |c| Ok(Box::new(FakeQuantFormat::new(c.dtype))),
    },
    FormatEntry {
        name: "gptq",
        about: "the packed GPTQ checkpoint (int32 codes, f16 scales, quantization_config)",
        default: true,
        build: |c| Ok(Box::new(GptqFormat::new(c)?)),
    },
    FormatEntry {
        name: "gguf",
        about: "a GGUF file for llama.cpp, linear layers in the block format of --gguf-type",
        default: false,
        build: |c| Ok(Box::new(GgufFormat::new(c)?)),
    },
];

/// The registered format `name` for a run.
///
/// # Errors
/// An unknown name, listing the known ones.
pub fn output_format(
    name: &str,
    context: &FormatContext,
) -> Result<Box<dyn OutputFormat>, PipelineError> {
    (registry::find(FORMATS, "output format", name)?.build)(context)
}

impl registry::Entry for FormatEntry {
    fn name(&self) -> &'static str {
        self.name
    }
}
