//! The layer-wise quantization pipeline (GPTQ's llama script, with MagR in front).
//!
//! For each decoder block in order: run the block in float on the current hidden
//! states of the calibration windows and accumulate `H = X^T X` (f64) for the inputs of
//! its seven linear layers; for each layer, optionally run MagR on `(W0, H)`, then
//! quantize (RTN, OPTQ or OPTQ + coordinate descent, the loss target always `W0`) and
//! write the dequantized weights into the block; then run the quantized block to get
//! the hidden states of the next block, so each block sees the quantized blocks before
//! it. Embeddings, norms and the output head stay in float. Every input of a block is
//! captured from the float block (no "true sequential" order).
//!
//! Deterministic: the same model, windows and settings give the same bytes.

use std::time::Instant;

use candle_core::Tensor;
use faer::{Mat, MatRef, Par};
use llama_io::{LinearInput, LinearKind, Model, XtxAccumulator};
use prox_opt::{Grouping, MagrOptions, Solver, magr};
use quantizers::{
    CoordinateDescent, GridSpec, LayerProblem, Optq, QuantizedLinear, Quantizer, Rtn, SweepOrder,
};
use serde::Serialize;

use crate::error::PipelineError;

/// The quantizer that follows MagR.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Method {
    /// Round to nearest.
    Rtn,
    /// OPTQ (GPTQ) with blocks of 128 and 1% damping.
    Optq,
    /// OPTQ then `sweeps` coordinate-descent sweeps (the paper's OPTQ-dagger) on
    /// `tr((W0 - Q)^T (H + lambda I) (W0 - Q))`; `lambda = None` is the reference
    /// `0.75 mean(diag H)`.
    OptqCd {
        /// Number of sweeps.
        sweeps: usize,
        /// The damping `lambda`.
        lambda: Option<f64>,
    },
}

/// Which calibration tokens form MagR's `H`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MagrHessian {
    /// All calibration windows (the same `H` as the quantizer's; the default).
    AllSamples,
    /// The last calibration window only, as the reference code does.
    LastSample,
}

/// MagR's settings in the pipeline (per channel, or per group when the grid has groups).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MagrSettings {
    /// Penalty `alpha` (reference: 1e-3 per channel, 1e-4 per group).
    pub alpha: f64,
    /// Iterations (reference: 200).
    pub iterations: usize,
    /// FISTA instead of the plain method.
    pub fista: bool,
    /// Which tokens form `H`.
    pub hessian: MagrHessian,
}

impl MagrSettings {
    /// The reference settings for a grid: alpha 1e-3 per channel or 1e-4 with groups,
    /// 200 plain iterations, `H` from all samples.
    pub fn reference(spec: &GridSpec) -> Self {
        Self {
            alpha: if spec.group_size().is_some() {
                1e-4
            } else {
                1e-3
            },
            iterations: 200,
            fista: false,
            hessian: MagrHessian::AllSamples,
        }
    }
}

/// Everything that decides the output of [`quantize_model`].
#[derive(Debug, Clone, Copy)]
pub struct PipelineSettings {
    /// The grid family (bits, groups, symmetry, beta).
    pub spec: GridSpec,
    /// The quantizer.
    pub method: Method,
    /// MagR before the quantizer, or not.
    pub magr: Option<MagrSettings>,
    /// OPTQ's act-order.
    pub act_order: bool,
    /// Calibration windows per forward batch (bounds the memory of one forward call).
    pub batch: usize,
    /// Parallelism of the linear algebra.
    pub par: Par,
}

/// What happened to one linear layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRecord {
    /// Decoder block.
    pub block: usize,
    /// Hugging Face name suffix (`q_proj`, ...).
    pub layer: &'static str,
    /// Inputs x outputs.
    pub shape: [usize; 2],
    /// MagR's objective before and after, its iterations and seconds (if it ran).
    pub magr: Option<MagrRecord>,
    /// Largest `|w|` of the layer before MagR and of what was quantized.
    pub max_abs_before: f32,
    /// Largest `|w|` after MagR (equal to `max_abs_before` without MagR).
    pub max_abs_after: f32,
    /// `tr((W0 - Q)^T H (W0 - Q))` of the quantized layer against the original weights.
    pub layer_loss: f64,
    /// Seconds of the quantizer.
    pub quantize_seconds: f64,
}

/// MagR's figures for one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MagrRecord {
    /// Objective at `W0`.
    pub objective_before: f64,
    /// Objective at the result.
    pub objective_after: f64,
    /// `||X (W - W0)||_F^2`.
    pub output_error: f64,
    /// Iterations run.
    pub iterations: usize,
    /// Seconds.
    pub seconds: f64,
}

/// Wall time of each stage, summed over blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageSeconds {
    /// Embedding the calibration windows.
    pub embed: f64,
    /// Float forward passes that accumulate `H`.
    pub capture: f64,
    /// MagR.
    pub magr: f64,
    /// The quantizer.
    pub quantize: f64,
    /// Forward passes of the quantized blocks.
    pub propagate: f64,
}

/// The pipeline's record of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PipelineReport {
    /// One record per linear layer, in block and forward order.
    pub layers: Vec<LayerRecord>,
    /// Time per stage.
    pub seconds: StageSeconds,
    /// Calibration windows and their length.
    pub calibration: [usize; 2],
}

/// Where the pipeline is, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Block `block` of `blocks` begins.
    Block {
        /// Block index.
        block: usize,
        /// Number of blocks.
        blocks: usize,
    },
    /// Layer `layer` of the current block is done.
    Layer {
        /// Block index.
        block: usize,
        /// Which layer.
        kind: LinearKind,
    },
}

/// Quantizes every linear layer of `model` in place (dequantized weights written back)
/// using the calibration `windows` (equal lengths), and reports per layer.
///
/// # Errors
/// No windows or windows of different lengths, a batch of zero, a group size that does
/// not divide a layer's width, and any error of the forward pass, MagR or the quantizer,
/// named with the block and layer. On error the model may hold some quantized blocks.
pub fn quantize_model(
    model: &mut Model,
    windows: &[Vec<u32>],
    settings: &PipelineSettings,
    progress: &mut dyn FnMut(Progress),
) -> Result<PipelineReport, PipelineError> {
    let seqlen = windows.first().map_or(0, Vec::len);
    if seqlen == 0 || windows.iter().any(|w| w.len() != seqlen) {
        return Err(PipelineError::Calibration(
            "calibration needs at least one window, all of the same non-zero length".into(),
        ));
    }
    if settings.batch == 0 {
        return Err(PipelineError::Settings("batch must be at least 1".into()));
    }
    let mut report = PipelineReport {
        calibration: [windows.len(), seqlen],
        ..PipelineReport::default()
    };
    let start = Instant::now();
    let mut hidden: Vec<Tensor> = windows
        .chunks(settings.batch)
        .map(|batch| model.embed(batch))
        .collect::<Result<_, _>>()?;
    report.seconds.embed = start.elapsed().as_secs_f64();

    let blocks = model.num_blocks();
    for block in 0..blocks {
        progress(Progress::Block { block, blocks });
        let start = Instant::now();
        let mut all = XtxAccumulator::new(model.config());
        for h in &hidden {
            model.run_block_capturing(block, h, &mut all)?;
        }
        let all = hessians(all, model);
        let last = match settings.magr {
            Some(MagrSettings {
                hessian: MagrHessian::LastSample,
                ..
            }) => {
                let mut last = XtxAccumulator::new(model.config());
                let h = hidden.last().expect("at least one batch");
                let rows = h.dim(0)?;
                model.run_block_capturing(block, &h.narrow(0, rows - 1, 1)?, &mut last)?;
                Some(hessians(last, model))
            }
            _ => None,
        };
        report.seconds.capture += start.elapsed().as_secs_f64();

        for kind in LinearKind::ALL {
            let input = kind.input().index();
            let h_magr = last.as_ref().map(|l| &l[input]);
            let record = quantize_layer(model, block, kind, &all[input], h_magr, settings)
                .map_err(|e| e.in_layer(block, kind))?;
            report.seconds.magr += record.magr.as_ref().map_or(0.0, |m| m.seconds);
            report.seconds.quantize += record.quantize_seconds;
            report.layers.push(record);
            progress(Progress::Layer { block, kind });
        }

        let start = Instant::now();
        for h in &mut hidden {
            *h = model.run_block(block, h)?;
        }
        report.seconds.propagate += start.elapsed().as_secs_f64();
    }
    Ok(report)
}

/// `H` (f32, in x in) of each of a block's four inputs, in [`LinearInput::index`]
/// order: converted once per block, shared by the layers that read the same input.
fn hessians(mut acc: XtxAccumulator, model: &Model) -> [Mat<f32>; 4] {
    LinearInput::ALL.map(|input| {
        let n = input.width(model.config());
        let h = acc.take(input);
        Mat::from_fn(n, n, |i, k| h[i * n + k] as f32)
    })
}

fn quantize_layer(
    model: &mut Model,
    block: usize,
    kind: LinearKind,
    h: &Mat<f32>,
    h_magr: Option<&Mat<f32>>,
    settings: &PipelineSettings,
) -> Result<LayerRecord, PipelineError> {
    let (outputs, inputs) = model.linear_shape(kind);
    // (out x in) row-major is W (in x out) column-major.
    let w0 = MatRef::from_column_major_slice(model.linear_weight(block, kind)?, inputs, outputs)
        .to_owned();
    let max_abs_before = max_abs(w0.as_ref());

    let (weights, magr_record) = match settings.magr {
        None => (None, None),
        Some(m) => {
            let options = MagrOptions {
                alpha: m.alpha,
                iterations: m.iterations,
                grouping: settings
                    .spec
                    .group_size()
                    .map_or(Grouping::PerChannel, Grouping::PerGroup),
                solver: if m.fista {
                    Solver::Fista
                } else {
                    Solver::Plain
                },
                record_trace: false,
                par: settings.par,
            };
            let (w, r) = magr(w0.as_ref(), h_magr.unwrap_or(h).as_ref(), &options)?;
            let record = MagrRecord {
                objective_before: r.objective_before,
                objective_after: r.objective_after,
                output_error: r.output_error,
                iterations: r.iterations,
                seconds: r.seconds,
            };
            (Some(w), Some(record))
        }
    };
    let to_quantize = weights.as_ref().unwrap_or(&w0);
    let max_abs_after = max_abs(to_quantize.as_ref());
    let problem = LayerProblem::new(to_quantize.as_ref(), h.as_ref()).with_original(w0.as_ref());

    let start = Instant::now();
    let optq = Optq {
        act_order: settings.act_order,
        par: settings.par,
        ..Optq::new(settings.spec)
    };
    let q: QuantizedLinear = match settings.method {
        Method::Rtn => Rtn {
            spec: settings.spec,
            par: settings.par,
        }
        .quantize(&problem)?,
        Method::Optq => optq.quantize(&problem)?,
        Method::OptqCd { sweeps, lambda } => CoordinateDescent {
            optq,
            sweeps,
            lambda,
            order: SweepOrder::Natural,
        }
        .quantize(&problem)?,
    };
    let quantize_seconds = start.elapsed().as_secs_f64();
    let layer_loss = q.layer_loss();
    let deq = q.into_dequantized();
    let mut values = Vec::with_capacity(inputs * outputs);
    for j in 0..outputs {
        values.extend_from_slice(deq.col_as_slice(j));
    }
    model.set_linear_weight(block, kind, &values)?;
    Ok(LayerRecord {
        block,
        layer: kind.hf_suffix(),
        shape: [inputs, outputs],
        magr: magr_record,
        max_abs_before,
        max_abs_after,
        layer_loss,
        quantize_seconds,
    })
}

fn max_abs(w: MatRef<'_, f32>) -> f32 {
    prox_opt::column_max_abs(w)
        .into_iter()
        .fold(0.0f32, f32::max)
}
