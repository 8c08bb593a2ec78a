//! The layer-wise quantization pipeline (GPTQ's llama script, with MagR in front).
//!
//! For each decoder block in order: run the block in float on the current hidden
//! states of the calibration windows and accumulate `H = X^T X` (f64) for the inputs of
//! its seven linear layers; for each layer, optionally run MagR on `(W0, H)`, then
//! quantize (RTN, OPTQ or OPTQ + coordinate descent, the loss target always `W0`) and
//! write the dequantized weights into the block; then run the quantized block to get
//! the hidden states of the next block, so each block sees the quantized blocks before
//! it. Embeddings, norms and the output head stay in float. By default every input of a
//! block is captured from the float block; in the "true sequential" order the four
//! inputs (q/k/v, o, gate/up, down) are captured one after the other, each from the
//! block with the layers before it already quantized.
//!
//! A run is a sequence of [`PipelineState`]s, one per finished block, handed to a
//! [`PipelineObserver`] (which may checkpoint them); [`continue_quantize_model`] resumes
//! from one. Deterministic: the same model, windows and settings give the same bytes,
//! resumed or not.

use std::time::Instant;

use candle_core::Tensor;
use faer::{Mat, MatRef, Par};
use llama_io::{InputSink, LinearInput, LinearKind, Model, XtxAccumulator};
use prox_opt::{Grouping, MagrOptions, Solver, magr};
use quantizers::{
    CoordinateDescent, GridSpec, LayerProblem, Optq, QuantizedLinear, Quantizer, Rtn, SweepOrder,
};
use serde::{Deserialize, Serialize};

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
    /// Capture each input of a block after the layers before it are quantized.
    pub true_sequential: bool,
    /// Calibration windows per forward batch (bounds the memory of one forward call).
    pub batch: usize,
    /// Parallelism of the linear algebra.
    pub par: Par,
}

/// What happened to one linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Decoder block.
    pub block: usize,
    /// Hugging Face name suffix (`q_proj`, ...).
    pub layer: String,
    /// Inputs x outputs.
    pub shape: [usize; 2],
    /// MagR's objective before and after, its iterations and seconds (if it ran).
    pub magr: Option<MagrRecord>,
    /// Largest `|w|` of the layer before MagR and of what was quantized.
    pub max_abs_before: f32,
    /// Largest `|w|` after MagR (equal to `max_abs_before` without MagR).
    pub max_abs_after: f32,
    /// Distribution of `|w|` before and after MagR.
    pub magnitudes: MagnitudeHistogram,
    /// `tr((W0 - Q)^T H (W0 - Q))` of the quantized layer against the original weights.
    pub layer_loss: f64,
    /// Seconds of the quantizer.
    pub quantize_seconds: f64,
}

/// Counts of `|w|` of one layer in [`MagnitudeHistogram::BINS`] equal bins on
/// `[0, upper]`, `upper` the largest `|w|` before MagR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagnitudeHistogram {
    /// Upper end of the last bin.
    pub upper: f32,
    /// Counts of the original weights.
    pub before: Vec<u64>,
    /// Counts of the weights handed to the quantizer (after MagR, if it ran).
    pub after: Vec<u64>,
}

impl MagnitudeHistogram {
    /// Number of bins.
    pub const BINS: usize = 48;

    fn new(before: MatRef<'_, f32>, after: MatRef<'_, f32>, upper: f32) -> Self {
        let counts = |w: MatRef<'_, f32>| {
            let mut counts = vec![0u64; Self::BINS];
            let scale = if upper > 0.0 {
                Self::BINS as f32 / upper
            } else {
                0.0
            };
            for j in 0..w.ncols() {
                for &x in w.col(j).iter() {
                    let bin = ((x.abs() * scale) as usize).min(Self::BINS - 1);
                    counts[bin] += 1;
                }
            }
            counts
        };
        MagnitudeHistogram {
            upper,
            before: counts(before),
            after: counts(after),
        }
    }
}

/// MagR's figures for one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// Receives what the pipeline produces while it runs. Every method has a default that
/// does nothing; a closure `FnMut(Progress)` is an observer that only shows progress.
pub trait PipelineObserver {
    /// Where the run is.
    fn progress(&mut self, _progress: Progress) {}

    /// Layer `kind` of `block` is quantized (its codes and grids; the dequantized weights
    /// are written into the model right after).
    ///
    /// # Errors
    /// Any error stops the run.
    fn layer_quantized(
        &mut self,
        _block: usize,
        _kind: LinearKind,
        _quantized: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        Ok(())
    }

    /// A block is finished: `model` holds its quantized weights and `state` is where a
    /// resumed run would start.
    ///
    /// # Errors
    /// Any error stops the run.
    fn block_finished(
        &mut self,
        _model: &Model,
        _state: &PipelineState,
    ) -> Result<(), PipelineError> {
        Ok(())
    }
}

impl<F: FnMut(Progress)> PipelineObserver for F {
    fn progress(&mut self, progress: Progress) {
        self(progress)
    }
}

/// Where a run stands between blocks: blocks before `next_block` are quantized (in the
/// model), `hidden` holds the calibration hidden states that enter `next_block` (one
/// tensor `[batch, seqlen, hidden]` per batch of windows), `report` the records so far.
#[derive(Debug, Clone)]
pub struct PipelineState {
    /// The first block not yet quantized.
    pub next_block: usize,
    /// Hidden states entering `next_block`, per batch of calibration windows.
    pub hidden: Vec<Tensor>,
    /// Records of the finished blocks.
    pub report: PipelineReport,
}

impl PipelineState {
    /// The start of a run: the calibration `windows` (equal, non-zero lengths) embedded
    /// in batches of `batch`.
    ///
    /// # Errors
    /// No windows, windows of different lengths, a batch of zero, and embedding errors.
    pub fn start(model: &Model, windows: &[Vec<u32>], batch: usize) -> Result<Self, PipelineError> {
        let seqlen = windows.first().map_or(0, Vec::len);
        if seqlen == 0 || windows.iter().any(|w| w.len() != seqlen) {
            return Err(PipelineError::Calibration(
                "calibration needs at least one window, all of the same non-zero length".into(),
            ));
        }
        if batch == 0 {
            return Err(PipelineError::Settings("batch must be at least 1".into()));
        }
        let start = Instant::now();
        let hidden = windows
            .chunks(batch)
            .map(|b| model.embed(b))
            .collect::<Result<_, _>>()?;
        let mut report = PipelineReport {
            calibration: [windows.len(), seqlen],
            ..PipelineReport::default()
        };
        report.seconds.embed = start.elapsed().as_secs_f64();
        Ok(PipelineState {
            next_block: 0,
            hidden,
            report,
        })
    }
}

/// Quantizes every linear layer of `model` in place (dequantized weights written back)
/// using the calibration `windows` (equal lengths), and reports per layer.
///
/// # Errors
/// No windows or windows of different lengths, a batch of zero, a group size that does
/// not divide a layer's width, any error of the forward pass, MagR or the quantizer,
/// named with the block and layer, and the observer's errors. On error the model may
/// hold some quantized blocks.
pub fn quantize_model(
    model: &mut Model,
    windows: &[Vec<u32>],
    settings: &PipelineSettings,
    observer: &mut dyn PipelineObserver,
) -> Result<PipelineReport, PipelineError> {
    let state = PipelineState::start(model, windows, settings.batch)?;
    continue_quantize_model(model, state, settings, observer)
}

/// [`quantize_model`] from `state` on: `model` must hold the quantized weights of the
/// blocks before `state.next_block` (as the run that produced `state` left them).
///
/// # Errors
/// As [`quantize_model`]; also a state past the last block.
pub fn continue_quantize_model(
    model: &mut Model,
    mut state: PipelineState,
    settings: &PipelineSettings,
    observer: &mut dyn PipelineObserver,
) -> Result<PipelineReport, PipelineError> {
    let blocks = model.num_blocks();
    if state.next_block > blocks || state.hidden.is_empty() {
        return Err(PipelineError::Settings(format!(
            "cannot resume at block {} of a {blocks}-block model with {} batches",
            state.next_block,
            state.hidden.len()
        )));
    }
    for block in state.next_block..blocks {
        observer.progress(Progress::Block { block, blocks });
        let report = &mut state.report;
        let groups: Vec<&[LinearInput]> = if settings.true_sequential {
            LinearInput::ALL.iter().map(std::slice::from_ref).collect()
        } else {
            vec![&LinearInput::ALL[..]]
        };
        for inputs in groups {
            let start = Instant::now();
            let all = capture(model, block, &state.hidden, inputs, false)?;
            let last = match settings.magr {
                Some(MagrSettings {
                    hessian: MagrHessian::LastSample,
                    ..
                }) => Some(capture(model, block, &state.hidden, inputs, true)?),
                _ => None,
            };
            report.seconds.capture += start.elapsed().as_secs_f64();
            for (n, &input) in inputs.iter().enumerate() {
                for &kind in input.consumers() {
                    let h_magr = last.as_ref().map(|l| &l[n]);
                    let record =
                        quantize_layer(model, block, kind, &all[n], h_magr, settings, observer)
                            .map_err(|e| e.in_layer(block, kind))?;
                    report.seconds.magr += record.magr.as_ref().map_or(0.0, |m| m.seconds);
                    report.seconds.quantize += record.quantize_seconds;
                    report.layers.push(record);
                    observer.progress(Progress::Layer { block, kind });
                }
            }
        }

        let start = Instant::now();
        for h in &mut state.hidden {
            *h = model.run_block(block, h)?;
        }
        state.report.seconds.propagate += start.elapsed().as_secs_f64();
        state.next_block = block + 1;
        observer.block_finished(model, &state)?;
    }
    Ok(state.report)
}

/// `H` of each of `inputs` of `block` (in that order), from the block as the model holds
/// it now, over all batches of `hidden` or (`last_window`) the last window only.
fn capture(
    model: &Model,
    block: usize,
    hidden: &[Tensor],
    inputs: &[LinearInput],
    last_window: bool,
) -> Result<Vec<Mat<f32>>, PipelineError> {
    let mut acc = XtxAccumulator::new(model.config());
    let mut wanted = |input: LinearInput, x: &Tensor| {
        if inputs.contains(&input) {
            acc.consume(input, x)
        } else {
            Ok(())
        }
    };
    if last_window {
        let h = hidden.last().expect("at least one batch");
        let rows = h.dim(0)?;
        model.run_block_capturing(block, &h.narrow(0, rows - 1, 1)?, &mut wanted)?;
    } else {
        for h in hidden {
            model.run_block_capturing(block, h, &mut wanted)?;
        }
    }
    Ok(hessians(acc, model, inputs))
}

/// `H` (f32, in x in) of each of `inputs`: converted once per block, shared by the
/// layers that read the same input.
fn hessians(mut acc: XtxAccumulator, model: &Model, inputs: &[LinearInput]) -> Vec<Mat<f32>> {
    inputs
        .iter()
        .map(|&input| {
            let n = input.width(model.config());
            let h = acc.take(input);
            Mat::from_fn(n, n, |i, k| h[i * n + k] as f32)
        })
        .collect()
}

fn quantize_layer(
    model: &mut Model,
    block: usize,
    kind: LinearKind,
    h: &Mat<f32>,
    h_magr: Option<&Mat<f32>>,
    settings: &PipelineSettings,
    observer: &mut dyn PipelineObserver,
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
    let magnitudes = MagnitudeHistogram::new(w0.as_ref(), to_quantize.as_ref(), max_abs_before);
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
    observer.layer_quantized(block, kind, &q)?;
    let layer_loss = q.layer_loss();
    let deq = q.into_dequantized();
    let mut values = Vec::with_capacity(inputs * outputs);
    for j in 0..outputs {
        values.extend_from_slice(deq.col_as_slice(j));
    }
    model.set_linear_weight(block, kind, &values)?;
    Ok(LayerRecord {
        block,
        layer: kind.hf_suffix().to_string(),
        shape: [inputs, outputs],
        magr: magr_record,
        max_abs_before,
        max_abs_after,
        magnitudes,
        layer_loss,
        quantize_seconds,
    })
}

fn max_abs(w: MatRef<'_, f32>) -> f32 {
    prox_opt::column_max_abs(w)
        .into_iter()
        .fold(0.0f32, f32::max)
}
