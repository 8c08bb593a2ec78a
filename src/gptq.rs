//! The packed GPTQ checkpoint of a quantized model: per linear layer `qweight`,
//! `qzeros`, `scales` (f16) and `g_idx` (layouts in [`quantizers::pack_gptq`]), and a
//! `quantization_config` (`quant_method: "gptq"`) in `config.json`, beside the float
//! embeddings, norms and head. Because grid scales are f16 values, a loader dequantizes
//! exactly the fake-quant weights the pipeline wrote into the model.

use std::collections::BTreeMap;
use std::path::Path;

use llama_io::{
    LinearKind, Model, PackedData, PackedLinears, PackedTensor, WeightDtype, write_packed_hf_dir,
};
use quantizers::{GptqTensors, GridSpec, QuantizedLinear, ZeroFormat, pack_gptq};

use crate::PipelineError;

/// The packed layers of a run, collected as the pipeline quantizes them.
#[derive(Debug, Clone)]
pub struct GptqCheckpoint {
    spec: GridSpec,
    act_order: bool,
    layers: BTreeMap<(usize, LinearKind), GptqTensors>,
}

impl GptqCheckpoint {
    /// An empty checkpoint for grids `spec` (act-order is recorded as `desc_act`).
    pub fn new(spec: GridSpec, act_order: bool) -> Self {
        GptqCheckpoint {
            spec,
            act_order,
            layers: BTreeMap::new(),
        }
    }

    /// Packs layer `kind` of `block`, its zero points in the layout that holds them
    /// (v1 where it can).
    ///
    /// # Errors
    /// A layer with zero points both 0 and `2^bits`, which no GPTQ layout stores.
    pub fn add(
        &mut self,
        block: usize,
        kind: LinearKind,
        q: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        let bits = q.spec().bits();
        let format =
            ZeroFormat::choose(q.grids().iter().map(|g| g.zero), bits).ok_or_else(|| {
                PipelineError::Output(format!(
                    "{}: zero points 0 and {} in one layer; no GPTQ layout stores both",
                    kind.hf_name(block),
                    1u32 << bits
                ))
            })?;
        self.insert(block, kind, pack_gptq(q, format)?);
        Ok(())
    }

    /// Adds an already packed layer (from a run checkpoint).
    pub fn insert(&mut self, block: usize, kind: LinearKind, tensors: GptqTensors) {
        self.layers.insert((block, kind), tensors);
    }

    /// The packed layer `kind` of `block`, if it is there.
    pub fn layer(&self, block: usize, kind: LinearKind) -> Option<&GptqTensors> {
        self.layers.get(&(block, kind))
    }

    /// The zero-point layout of the whole checkpoint: v1 (read by every loader) when it
    /// holds every layer's zero points, else v2.
    ///
    /// # Errors
    /// Zero points 0 in one layer and `2^bits` in another.
    pub fn format(&self) -> Result<ZeroFormat, PipelineError> {
        let bits = self.spec.bits();
        let mut all = Vec::new();
        for ((block, kind), t) in &self.layers {
            let zeros = t
                .zero_points()
                .map_err(|e| PipelineError::Output(format!("{}: {e}", kind.hf_name(*block))))?;
            all.extend(zeros);
        }
        ZeroFormat::choose(all.iter().copied(), bits).ok_or_else(|| {
            PipelineError::Output(format!(
                "zero points 0 and {} occur in this model; no single GPTQ layout stores both",
                1u32 << bits
            ))
        })
    }

    /// Writes the checkpoint of `model` (whose every linear layer must be packed here) as
    /// the Hugging Face directory `dir` (atomically; replacing it if `overwrite`), the
    /// float tensors in `dtype`. Returns the zero-point layout chosen.
    ///
    /// # Errors
    /// A linear layer not packed, [`GptqCheckpoint::format`]'s errors, and write errors.
    pub fn write(
        &self,
        model: &Model,
        dir: &Path,
        dtype: WeightDtype,
        overwrite: bool,
    ) -> Result<ZeroFormat, PipelineError> {
        let format = self.format()?;
        let mut packed = PackedLinears {
            layers: BTreeMap::new(),
            quantization_config: serde_json::json!({
                "quant_method": "gptq",
                "bits": self.spec.bits(),
                "group_size": self.spec.group_size().map_or(-1, |g| g as i64),
                "desc_act": self.act_order,
                "sym": self.spec.symmetric(),
                "checkpoint_format": format.checkpoint_format(),
                "damp_percent": 0.01,
                "static_groups": false,
            }),
        };
        for block in 0..model.num_blocks() {
            for kind in LinearKind::ALL {
                let t = self.layer(block, kind).ok_or_else(|| {
                    PipelineError::Output(format!("{} was not quantized", kind.hf_name(block)))
                })?;
                let t = t.to_format(format)?;
                let (qweight_shape, qzeros_shape) = (t.qweight_shape(), t.qzeros_shape());
                let parts = vec![
                    PackedTensor {
                        suffix: "qweight",
                        shape: qweight_shape.to_vec(),
                        data: PackedData::I32(t.qweight),
                    },
                    PackedTensor {
                        suffix: "qzeros",
                        shape: qzeros_shape.to_vec(),
                        data: PackedData::I32(t.qzeros),
                    },
                    PackedTensor {
                        suffix: "scales",
                        shape: vec![t.groups, t.outputs],
                        data: PackedData::F16(t.scales),
                    },
                    PackedTensor {
                        suffix: "g_idx",
                        shape: vec![t.inputs],
                        data: PackedData::I32(t.g_idx),
                    },
                ];
                packed.layers.insert((block, kind), parts);
            }
        }
        write_packed_hf_dir(model, dir, dtype, overwrite, &packed)?;
        Ok(format)
    }
}
