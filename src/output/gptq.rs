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

use llama_io::{DirExtras, LinearKind, Model, NamedTensor, TensorData};
use quantizers::{GptqTensors, GridSpec, QuantizedLinear, ZeroFormat, pack_gptq};
use serde_json::{Value, json};

use super::{FormatContext, FormatState, OutputFormat};
use crate::error::PipelineError;

/// The packed layers of a run, collected as the pipeline quantizes them.
#[derive(Debug, Clone)]
pub struct GptqFormat {
    context: FormatContext,
    layers: BTreeMap<(usize, LinearKind), GptqTensors>,
}

/// The name of each tensor of a packed layer after its module name
/// (`model.layers.0.self_attn.q_proj.qweight`): the one place that spells them.
const QWEIGHT: &str = "qweight";
const QZEROS: &str = "qzeros";
const SCALES: &str = "scales";
const G_IDX: &str = "g_idx";

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
        })
    }

    /// The packed layer `kind` of `block`, if it is there.
    pub fn layer(&self, block: usize, kind: LinearKind) -> Option<&GptqTensors> {
        self.layers.get(&(block, kind))
    }

    /// The zero-point layout of the whole checkpoint: the preferred one
    /// ([`GptqFormat::preferred_layout`]) when it holds every layer's zero points, else
    /// the other.
    ///
    /// # Errors
    /// Zero points 0 in one layer and `2^bits` in another.
    pub fn zero_format(&self) -> Result<ZeroFormat, PipelineError> {
        let bits = self.context.spec.bits();
        let mut all = Vec::new();
        for ((block, kind), t) in &self.layers {
            let zeros = t
                .zero_points()
                .map_err(|e| PipelineError::Output(format!("{}: {e}", kind.hf_name(*block))))?;
            all.extend(zeros);
        }
        ZeroFormat::choose(all.iter().copied(), bits, self.preferred_layout()).ok_or_else(|| {
            PipelineError::Output(format!(
                "zero points 0 and {} occur in this model; no single GPTQ layout stores both",
                1u32 << bits
            ))
        })
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
        self.layers.insert((block, kind), pack_gptq(q, format)?);
        Ok(())
    }

    fn write(&self, model: &Model, dir: &Path) -> Result<Option<String>, PipelineError> {
        let format = self.zero_format()?;
        let mut extras = DirExtras {
            omitted: BTreeSet::new(),
            tensors: Vec::new(),
            config: serde_json::Map::new(),
        };
        extras.config.insert(
            "quantization_config".into(),
            self.quantization_config(format),
        );
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                let t = self.layer(block, kind).ok_or_else(|| {
                    PipelineError::Output(format!("{} was not quantized", kind.hf_name(block)))
                })?;
                let name = kind.hf_name(block);
                let module = name.trim_end_matches(".weight");
                extras
                    .tensors
                    .extend(layer_tensors(module, &t.to_format(format)?));
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
            let t = self.layer(block, kind).ok_or_else(|| {
                PipelineError::Output(format!("{} was not packed", kind.hf_name(block)))
            })?;
            let suffix = kind.hf_suffix();
            state.tensors.extend(layer_tensors(suffix, t));
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
            let suffix = kind.hf_suffix();
            let missing = |what: &str| {
                PipelineError::Output(format!(
                    "{}: no packed {what} in the checkpoint",
                    kind.hf_name(block)
                ))
            };
            let format = match state
                .metadata
                .get(&format!("{suffix}.format"))
                .map(String::as_str)
            {
                Some("gptq") => ZeroFormat::V1,
                Some("gptq_v2") => ZeroFormat::V2,
                Some(other) => {
                    return Err(PipelineError::Output(format!(
                        "{}: unknown zero layout `{other}` in the checkpoint",
                        kind.hf_name(block)
                    )));
                }
                None => return Err(missing("layout")),
            };
            let mut take = |part: &str| {
                tensors
                    .remove(&format!("{suffix}.{part}"))
                    .ok_or_else(|| missing(part))
            };
            let (qweight, qzeros, scales, g_idx) =
                (take(QWEIGHT)?, take(QZEROS)?, take(SCALES)?, take(G_IDX)?);
            let (outputs, inputs) = (
                qweight.shape.get(1).copied().unwrap_or(0),
                g_idx.shape.first().copied().unwrap_or(0),
            );
            let ints = |t: NamedTensor| match t.data {
                TensorData::I32(v) => Ok(v),
                _ => Err(PipelineError::Output(format!(
                    "checkpoint tensor {} is not int32",
                    t.name
                ))),
            };
            let groups = scales.shape.first().copied().unwrap_or(0);
            let scales = match scales.data {
                TensorData::F16(v) => v,
                _ => {
                    return Err(PipelineError::Output(format!(
                        "checkpoint tensor {} is not f16",
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
                .map_err(|e| PipelineError::Output(format!("{}: {e}", kind.hf_name(block))))?;
            self.layers.insert((block, kind), t);
        }
        Ok(())
    }
}
