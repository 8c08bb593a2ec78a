//! `gptq/`: the packed GPTQ checkpoint of a quantized model: per linear layer `qweight`,
//! `qzeros`, `scales` (f16) and `g_idx` (layouts in [`quantizers::pack_gptq`]), and a
//! `quantization_config` (`quant_method: "gptq"`) in `config.json`, beside the float
//! embeddings, norms and head. Because grid scales are f16 values, a loader dequantizes
//! exactly the fake-quant weights the pipeline wrote into the model.
//!
//! The zero-point layout ([`GptqFormat::preferred_layout`]): symmetric grids in v1
//! (`checkpoint_format: "gptq"`, which every GPTQ loader reads); asymmetric grids in v2
//! (`"gptq_v2"`): GPTQModel 7.7 refuses asymmetric v1 files that it did not write itself
//! (its v1 zero-point offset cannot be trusted from other producers), while GPTQModel and
//! transformers (through GPTQModel) read v2. vLLM 0.33 runs symmetric 4- and 8-bit
//! checkpoints only, whatever the layout (`RunReport::gptq_loader_notes` says so per
//! run). Either layout is used where only it holds every zero point.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use llama_io::{DirExtras, ExtraTensor, LinearKind, Model, NamedTensor, StoredTensor, TensorData};
use quantizers::{GptqTensors, GridSpec, QuantizedLinear, ZeroFormat, pack_gptq, pack_qzeros};
use serde_json::{Value, json};

use super::{FormatContext, FormatState, OutputFormat, SavedBlock};
use crate::error::PipelineError;

/// The packed layers of a run, collected as the pipeline quantizes them; a block's
/// layers leave the memory once a run checkpoint holds them
/// ([`OutputFormat::release_block`]) and are read from there, a tensor at a time, when
/// the directory is written.
#[derive(Debug, Clone)]
pub struct GptqFormat {
    context: FormatContext,
    layers: BTreeMap<(usize, LinearKind), PackedLayer>,
    /// Every zero point of the layers so far (at most `2^bits + 1` values), which decide
    /// the checkpoint's layout.
    zeros: BTreeSet<u32>,
}

/// A packed layer: in memory, or its tensors (in their zero layout) in a checkpoint file.
#[derive(Debug, Clone)]
enum PackedLayer {
    Memory(GptqTensors),
    Saved {
        parts: Box<[StoredTensor; 4]>,
        format: ZeroFormat,
    },
}

/// The name of each tensor of a packed layer after its module name
/// (`model.layers.0.self_attn.q_proj.qweight`): the one place that spells them.
const QWEIGHT: &str = "qweight";
const QZEROS: &str = "qzeros";
const SCALES: &str = "scales";
const G_IDX: &str = "g_idx";
/// In the order [`layer_tensors`] lists them.
const PARTS: [&str; 4] = [QWEIGHT, QZEROS, SCALES, G_IDX];

/// The tensors of packed layer `t`, named `{module}.qweight` and so on.
fn layer_tensors(module: &str, t: &GptqTensors) -> Vec<NamedTensor> {
    let tensor = |suffix: &str, shape: Vec<usize>, data: TensorData| NamedTensor {
        name: format!("{module}.{suffix}"),
        shape,
        data,
    };
    vec![
        tensor(
            QWEIGHT,
            t.qweight_shape().to_vec(),
            TensorData::I32(t.qweight.clone()),
        ),
        tensor(
            QZEROS,
            t.qzeros_shape().to_vec(),
            TensorData::I32(t.qzeros.clone()),
        ),
        tensor(
            SCALES,
            t.scales_shape().to_vec(),
            TensorData::F16(t.scales.clone()),
        ),
        tensor(G_IDX, vec![t.inputs], TensorData::I32(t.g_idx.clone())),
    ]
}

/// The zero layout of `layer` (suffix `suffix`) that a checkpoint block's `metadata`
/// names (`gptq`, `gptq_v2`).
fn saved_zero_format(
    metadata: &BTreeMap<String, String>,
    suffix: &str,
    layer: &str,
) -> Result<ZeroFormat, PipelineError> {
    match metadata
        .get(&format!("{suffix}.format"))
        .map(String::as_str)
    {
        Some("gptq") => Ok(ZeroFormat::V1),
        Some("gptq_v2") => Ok(ZeroFormat::V2),
        Some(other) => Err(PipelineError::Output(format!(
            "{layer}: unknown zero layout `{other}` in the checkpoint"
        ))),
        None => Err(PipelineError::Output(format!(
            "{layer}: no zero layout in the checkpoint"
        ))),
    }
}

impl GptqFormat {
    /// An empty checkpoint for a run (grids, `desc_act`, `damp_percent`, float dtype).
    ///
    /// # Errors
    /// GGUF grids the GPTQ layout cannot hold: a minimum (`q * d + m`), K-quant sub-block
    /// scales, a preset's per-layer types.
    pub fn new(context: &FormatContext) -> Result<Self, PipelineError> {
        let ggml = context.spec.ggml_type();
        if let Some(name) = context.gguf_preset.map(|p| p.name()).or_else(|| {
            ggml.filter(|t| t.has_min() || t.is_k_quant())
                .map(|t| t.name())
        }) {
            return Err(PipelineError::Settings(format!(
                "the gptq format cannot hold GGUF {name} grids (a block minimum, or K-quant \
                 sub-block scales): write --formats fake-quant,gguf"
            )));
        }
        Ok(GptqFormat {
            context: *context,
            layers: BTreeMap::new(),
            zeros: BTreeSet::new(),
        })
    }

    /// The packed layer `kind` of `block`, if it is there (read from the run checkpoint
    /// once released there).
    ///
    /// # Errors
    /// A failed read, or tensors that are not a packed layer, naming the file or layer.
    pub fn layer(
        &self,
        block: usize,
        kind: LinearKind,
    ) -> Result<Option<GptqTensors>, PipelineError> {
        match self.layers.get(&(block, kind)) {
            None => Ok(None),
            Some(PackedLayer::Memory(t)) => Ok(Some(t.clone())),
            Some(PackedLayer::Saved { parts, format }) => {
                let [qweight, qzeros, scales, g_idx] = parts
                    .each_ref()
                    .map(|t| NamedTensor::read(t).map_err(PipelineError::from));
                let name = kind.hf_name(block);
                let parts = [qweight?, qzeros?, scales?, g_idx?];
                self.unpacked_from(&name, *format, parts).map(Some)
            }
        }
    }

    /// How many packed layers are held in memory (the others are left in the run
    /// checkpoint).
    pub fn layers_in_memory(&self) -> usize {
        (self.layers.values())
            .filter(|l| matches!(l, PackedLayer::Memory(_)))
            .count()
    }

    /// A packed layer from its four tensors ([`PARTS`]' order) in zero layout `format`,
    /// every length and index checked.
    fn unpacked_from(
        &self,
        layer: &str,
        format: ZeroFormat,
        [qweight, qzeros, scales, g_idx]: [NamedTensor; 4],
    ) -> Result<GptqTensors, PipelineError> {
        let ints = |t: NamedTensor| match t.data {
            TensorData::I32(v) => Ok(v),
            _ => Err(PipelineError::Output(format!(
                "{layer}: checkpoint tensor {} is not int32",
                t.name
            ))),
        };
        let (outputs, inputs, groups) = (
            qweight.shape.get(1).copied().unwrap_or(0),
            g_idx.shape.first().copied().unwrap_or(0),
            scales.shape.first().copied().unwrap_or(0),
        );
        let scales = match scales.data {
            TensorData::F16(v) => v,
            _ => {
                return Err(PipelineError::Output(format!(
                    "{layer}: checkpoint tensor {} is not f16",
                    scales.name
                )));
            }
        };
        let t = GptqTensors {
            bits: self.context.spec.bits(),
            inputs,
            outputs,
            groups,
            qweight: ints(qweight)?,
            format,
            qzeros: ints(qzeros)?,
            scales,
            g_idx: ints(g_idx)?,
        };
        // Validates every length and index.
        quantizers::dequantize_gptq(&t)
            .map_err(|e| PipelineError::Output(format!("{layer}: {e}")))?;
        Ok(t)
    }

    /// The zero-point layout of the whole checkpoint: the preferred one
    /// ([`GptqFormat::preferred_layout`]) when it holds every layer's zero points, else
    /// the other.
    ///
    /// # Errors
    /// Zero points 0 in one layer and `2^bits` in another.
    pub fn zero_format(&self) -> Result<ZeroFormat, PipelineError> {
        let bits = self.context.spec.bits();
        ZeroFormat::choose(self.zeros.iter().copied(), bits, self.preferred_layout()).ok_or_else(
            || {
                PipelineError::Output(format!(
                    "zero points 0 and {} occur in this model; no single GPTQ layout stores both",
                    1u32 << bits
                ))
            },
        )
    }

    /// The zero-point layout written when it holds every zero point: v1 for symmetric
    /// grids, v2 for asymmetric ones (module docs).
    pub fn preferred_layout(&self) -> ZeroFormat {
        if self.context.spec.symmetric() {
            ZeroFormat::V1
        } else {
            ZeroFormat::V2
        }
    }

    /// `config.json`'s `quantization_config` for zero points in `format`.
    fn quantization_config(&self, format: ZeroFormat) -> Value {
        let spec: &GridSpec = &self.context.spec;
        let mut config = json!({
            "quant_method": "gptq",
            "bits": spec.bits(),
            "group_size": spec.group_size().map_or(-1, |g| g as i64),
            "desc_act": self.context.act_order,
            "sym": spec.symmetric(),
            "checkpoint_format": format.checkpoint_format(),
            "static_groups": false,
        });
        if let Some(damping) = self.context.damping {
            config["damp_percent"] = json!(damping);
        }
        config
    }

    /// Tensor `part` of layer `kind` of `block` as written, zero points in `format`:
    /// only that tensor is read from the checkpoint (with the zero points, which
    /// `format` may store otherwise, repacked).
    fn part(
        &self,
        block: usize,
        kind: LinearKind,
        part: &str,
        format: ZeroFormat,
    ) -> Result<TensorData, PipelineError> {
        let name = kind.hf_name(block);
        let packed = self
            .layers
            .get(&(block, kind))
            .ok_or_else(|| PipelineError::Output(format!("{name} was not quantized")))?;
        let bits = self.context.spec.bits();
        // Only the zero points are converted, from the layer's own layout to `format`.
        let (zeros, (groups, outputs)) = match packed {
            PackedLayer::Memory(t) => match part {
                QWEIGHT => return Ok(TensorData::I32(t.qweight.clone())),
                SCALES => return Ok(TensorData::F16(t.scales.clone())),
                G_IDX => return Ok(TensorData::I32(t.g_idx.clone())),
                _ => (t.zero_points()?, (t.groups, t.outputs)),
            },
            PackedLayer::Saved { parts, format: own } => {
                let index = PARTS.iter().position(|p| *p == part).unwrap_or(0);
                let data = NamedTensor::read(&parts[index])?.data;
                let (TensorData::I32(packed), true) = (&data, part == QZEROS) else {
                    return Ok(data);
                };
                let (groups, outputs) = (parts[2].shape()[0], parts[2].shape()[1]);
                let zeros = quantizers::unpack_qzeros(packed, groups, outputs, bits, *own)?;
                (zeros, (groups, outputs))
            }
        };
        Ok(TensorData::I32(pack_qzeros(
            &zeros, groups, outputs, bits, format,
        )?))
    }

    /// The shape of tensor `part` of a layer, from memory or the checkpoint's header.
    fn part_shape(packed: &PackedLayer, part: &str) -> Vec<usize> {
        let index = PARTS.iter().position(|p| *p == part).unwrap_or(0);
        match packed {
            PackedLayer::Memory(t) => match index {
                0 => t.qweight_shape().to_vec(),
                1 => t.qzeros_shape().to_vec(),
                2 => t.scales_shape().to_vec(),
                _ => vec![t.inputs],
            },
            PackedLayer::Saved { parts, .. } => parts[index].shape().to_vec(),
        }
    }
}

impl OutputFormat for GptqFormat {
    fn name(&self) -> &str {
        "gptq"
    }

    /// Packs the layer, its zero points in the preferred layout where it holds them.
    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        q: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        let bits = q.spec().bits();
        let zeros = q.grids().iter().map(|g| g.zero);
        let format = ZeroFormat::choose(zeros, bits, self.preferred_layout()).ok_or_else(|| {
            PipelineError::Output(format!(
                "{}: zero points 0 and {} in one layer; no GPTQ layout stores both",
                kind.hf_name(block),
                1u32 << bits
            ))
        })?;
        let t = pack_gptq(q, format)?;
        self.zeros.extend(q.grids().iter().map(|g| g.zero));
        self.layers.insert((block, kind), PackedLayer::Memory(t));
        Ok(())
    }

    /// The float tensors as the model holds them, then each packed tensor made when the
    /// writer reaches it (one at a time: the packed model is never whole in memory).
    fn write(&self, model: &Model, dir: &Path) -> Result<Option<String>, PipelineError> {
        let format = self.zero_format()?;
        let mut extras = DirExtras::default();
        extras.config.insert(
            "quantization_config".into(),
            self.quantization_config(format),
        );
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                let name = kind.hf_name(block);
                let packed = self
                    .layers
                    .get(&(block, kind))
                    .ok_or_else(|| PipelineError::Output(format!("{name} was not quantized")))?;
                let module = name.trim_end_matches(".weight").to_string();
                for part in PARTS {
                    let dtype = match part {
                        SCALES => safetensors::Dtype::F16,
                        _ => safetensors::Dtype::I32,
                    };
                    extras.tensors.push(ExtraTensor::Made {
                        name: format!("{module}.{part}"),
                        shape: Self::part_shape(packed, part),
                        dtype,
                        make: Box::new(move || Ok(self.part(block, kind, part, format)?)),
                    });
                }
                extras.omitted.insert(name);
            }
        }
        llama_io::write_hf_dir_with(model, dir, self.context.dtype, true, &extras)?;
        Ok(Some(format!(
            "GPTQ checkpoint with zero points in the {} layout",
            format.checkpoint_format()
        )))
    }

    /// The packed layers of `block` (tensors named `{layer}.qweight` and so on, with the
    /// zero layout of each in `{layer}.format`).
    fn save_block(&self, block: usize) -> Result<FormatState, PipelineError> {
        let mut state = FormatState::default();
        for kind in LinearKind::ALL {
            let t = self.layer(block, kind)?.ok_or_else(|| {
                PipelineError::Output(format!("{} was not packed", kind.hf_name(block)))
            })?;
            let suffix = kind.hf_suffix();
            state.tensors.extend(layer_tensors(suffix, &t));
            state.metadata.insert(
                format!("{suffix}.format"),
                t.format.checkpoint_format().to_string(),
            );
        }
        Ok(state)
    }

    fn restore_block(&mut self, block: usize, mut state: FormatState) -> Result<(), PipelineError> {
        let mut tensors = state.tensors_by_name();
        for kind in LinearKind::ALL {
            let (suffix, layer) = (kind.hf_suffix(), kind.hf_name(block));
            let format = saved_zero_format(&state.metadata, suffix, &layer)?;
            let mut take = |part: &str| {
                tensors.remove(&format!("{suffix}.{part}")).ok_or_else(|| {
                    PipelineError::Output(format!("{layer}: no packed {part} in the checkpoint"))
                })
            };
            let parts = [take(QWEIGHT)?, take(QZEROS)?, take(SCALES)?, take(G_IDX)?];
            let t = self.unpacked_from(&layer, format, parts)?;
            self.zeros.extend(t.zero_points()?);
            self.layers.insert((block, kind), PackedLayer::Memory(t));
        }
        Ok(())
    }

    /// Each layer's tensors are left in the checkpoint file (same shapes and layout, or
    /// an error naming the layer).
    fn release_block(&mut self, block: usize, saved: SavedBlock) -> Result<(), PipelineError> {
        for kind in LinearKind::ALL {
            let (suffix, layer) = (kind.hf_suffix(), kind.hf_name(block));
            let format = saved_zero_format(&saved.metadata, suffix, &layer)?;
            let stored = |part: &str| saved.tensor(&format!("{suffix}.{part}"), &layer).cloned();
            let parts = [
                stored(QWEIGHT)?,
                stored(QZEROS)?,
                stored(SCALES)?,
                stored(G_IDX)?,
            ];
            let entry = self.layers.get_mut(&(block, kind));
            match entry {
                Some(packed @ PackedLayer::Memory(_))
                    if PARTS
                        .iter()
                        .zip(&parts)
                        .all(|(part, t)| Self::part_shape(packed, part) == t.shape()) =>
                {
                    *packed = PackedLayer::Saved {
                        parts: Box::new(parts),
                        format,
                    };
                }
                _ => {
                    return Err(PipelineError::Output(format!(
                        "{layer}: the checkpoint's packed tensors are not the ones made in \
                         this run"
                    )));
                }
            }
        }
        Ok(())
    }
}
