//! The layer-wise quantization pipeline (GPTQ's llama script, with MagR in front).
//!
//! For each decoder block in order: run the block in float on the current hidden
//! states of the calibration windows and accumulate `H = X^T X` (f64) for the inputs of
//! its seven linear layers; for each layer, run the [`Preprocessor`] (MagR or the
//! identity) on `(W0, H)`, then quantize with the [`Method`]'s quantizer (the loss target
//! always `W0`), the heavy work on the [`ComputeBackend`], and
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

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use faer::{Mat, MatRef, Par};
use llama_io::{LinearInput, LinearKind, LlamaConfig, Model};
use prox_opt::Quadratic;
use quantizers::{GridSpec, LayerProblem, QuantizedLinear, Quantizer};

use crate::backend::{ComputeBackend, Cpu, HELD_OUT_EVERY, Windows};
use crate::error::PipelineError;
use crate::gguf_preset::GgufPreset;
use crate::hidden::{HiddenDtype, HiddenStates};
use crate::method::{Method, OptqMethod, QuantizerContext};
use crate::preprocess::{MagrSettings, PreprocessContext, Preprocessor};
use magr_report::{
    ChoiceScore, ComponentRecord, LayerChoice, LayerRecord, MagnitudeHistogram, PipelineReport,
    SettingsRecord,
};

/// The shrink factors that `--beta auto` tries on each layer
/// ([`PipelineSettings::beta_choices`]).
pub const BETA_CHOICES: [f32; 7] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7];

/// Everything that decides the output of [`quantize_model`].
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// The grid family (bits, groups, symmetry, beta); under a GGUF preset, the preset's
    /// default type (each layer's own is [`PipelineSettings::layer_spec`]).
    pub spec: GridSpec,
    /// A llama.cpp K-quant preset choosing each layer's GGUF type, if any.
    pub gguf_preset: Option<GgufPreset>,
    /// The quantizer.
    pub method: Arc<dyn Method>,
    /// Shrink factors of the grid to choose among layer by layer by the held-out layer
    /// loss, with every setting of [`Preprocessor::choices`] (each pair is tried); empty:
    /// the spec's `beta`. Not for GGUF grids (their block parameters are searched).
    pub beta_choices: Vec<f32>,
    /// What runs before the quantizer (MagR, or the identity).
    pub preprocessor: Arc<dyn Preprocessor>,
    /// OPTQ's act-order.
    pub act_order: bool,
    /// Capture each input of a block after the layers before it are quantized.
    pub true_sequential: bool,
    /// Calibration windows per forward batch (bounds the memory of one forward call).
    pub batch: usize,
    /// The dtype of the calibration hidden states between blocks.
    pub hidden_dtype: HiddenDtype,
    /// A directory to keep the calibration hidden states in, one file per batch (only
    /// the batch being worked on is in memory); `None`: in memory. The bytes of the
    /// output do not depend on it.
    pub hidden_spill: Option<PathBuf>,
    /// Parallelism of the linear algebra.
    pub par: Par,
    /// Where the heavy per-layer work runs.
    pub backend: Arc<dyn ComputeBackend>,
}

impl PipelineSettings {
    /// MagR (default settings: FISTA) + OPTQ on `spec`, natural order, batches of 4, on the
    /// CPU with `par`.
    pub fn new(spec: GridSpec, par: Par) -> Self {
        PipelineSettings {
            spec,
            gguf_preset: None,
            method: Arc::new(OptqMethod),
            beta_choices: Vec::new(),
            preprocessor: Arc::new(MagrSettings::fista(&spec)),
            act_order: false,
            true_sequential: false,
            batch: 4,
            hidden_dtype: HiddenDtype::F32,
            hidden_spill: None,
            par,
            backend: Arc::new(Cpu),
        }
    }

    /// Checks, before any work, that these settings can quantize every layer of a model
    /// with `config` from calibration windows of `window` tokens: each layer's input width
    /// holds whole GGUF blocks (groups need not divide it: the last one is shorter), and
    /// the windows fit the model's context.
    ///
    /// # Errors
    /// [`PipelineError::Settings`] naming the layer and its width;
    /// [`PipelineError::Calibration`] naming the window length and the context.
    pub fn check(&self, config: &LlamaConfig, window: usize) -> Result<(), PipelineError> {
        if !self.beta_choices.is_empty() && self.gguf_name().is_some() {
            return Err(PipelineError::Settings(
                "the shrink factor cannot be chosen on GGUF grids: their block parameters \
                 are searched"
                    .into(),
            ));
        }
        for &beta in &self.beta_choices {
            self.spec_with_beta(beta)?;
        }
        for block in 0..config.num_hidden_layers {
            for kind in LinearKind::ALL {
                let (_, inputs) = kind.shape(config);
                self.layer_spec(config, block, kind)?
                    .group_rows(inputs)
                    .map_err(|e| {
                        PipelineError::Settings(format!("layer {kind} ({inputs} inputs): {e}"))
                    })?;
            }
        }
        config
            .check_window(window)
            .map_err(|e| PipelineError::Calibration(e.to_string()))
    }

    /// The grid family of layer `kind` of `block`: [`PipelineSettings::spec`], or under a
    /// GGUF preset the GGUF type the preset gives that layer ([`GgufPreset::layer_type`])
    /// with the spec's fit.
    ///
    /// # Errors
    /// A preset that cannot store the layer (see [`GgufPreset::layer_type`]).
    pub fn layer_spec(
        &self,
        config: &LlamaConfig,
        block: usize,
        kind: LinearKind,
    ) -> Result<GridSpec, PipelineError> {
        match self.gguf_preset {
            None => Ok(self.spec),
            Some(preset) => Ok(GridSpec::ggml(
                preset.layer_type(config, block, kind)?,
                self.spec.grid_fit(),
            )),
        }
    }

    /// [`PipelineSettings::spec`] with shrink factor `beta`.
    fn spec_with_beta(&self, beta: f32) -> Result<GridSpec, PipelineError> {
        let s = self.spec;
        Ok(GridSpec::new(
            s.bits(),
            s.group_size(),
            s.symmetric(),
            beta,
        )?)
    }

    /// The GGUF type or preset name of the run (`q4_0`, `q4_k_m`), if any.
    fn gguf_name(&self) -> Option<&'static str> {
        self.gguf_preset
            .map(GgufPreset::name)
            .or_else(|| self.spec.ggml_type().map(|t| t.name()))
    }

    /// The settings as `report.json` records them, with the calibration's text, windows,
    /// window length and seed.
    pub fn record(
        &self,
        calibration_text: PathBuf,
        nsamples: usize,
        seqlen: usize,
        seed: u64,
    ) -> SettingsRecord {
        SettingsRecord {
            bits: self.spec.bits(),
            group_size: self.spec.group_size(),
            symmetric: self.spec.symmetric(),
            beta: self.spec.beta(),
            beta_choices: self.beta_choices.clone(),
            gguf_type: self.gguf_name().map(str::to_string),
            method: ComponentRecord {
                name: self.method.name().to_string(),
                label: self.method.to_string(),
                parameters: self.method.parameters(),
            },
            preprocessor: ComponentRecord {
                name: self.preprocessor.name().to_string(),
                label: self.preprocessor.to_string(),
                parameters: self.preprocessor.parameters(),
            },
            act_order: self.act_order,
            true_sequential: self.true_sequential,
            hidden_dtype: self.hidden_dtype.name().to_string(),
            backend: self.backend.name().to_string(),
            calibration_text,
            nsamples,
            seqlen,
            seed,
        }
    }

    /// The label of the run (`MagR+OPTQ w3 g64`).
    pub fn label(&self) -> String {
        let preprocessor =
            (!self.preprocessor.is_identity()).then(|| self.preprocessor.to_string());
        format!(
            "{}{}",
            magr_report::method_label(preprocessor.as_deref(), &self.method.to_string()),
            magr_report::grid_label(self.spec.bits(), self.spec.group_size(), self.gguf_name())
        )
    }
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

    /// Something the user should know about layer `kind` of `block` (a layer that
    /// calibration never activates, for instance); the same text is in its record.
    fn warning(&mut self, _block: usize, _kind: LinearKind, _warning: &str) {}

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
    /// resumed run would start. An observer that saved the weights may leave them in
    /// the saved file ([`Model::set_linear_stored`]), so that finished blocks do not
    /// stay in memory.
    ///
    /// # Errors
    /// Any error stops the run.
    fn block_finished(
        &mut self,
        _model: &mut Model,
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
/// tensor `[batch, seqlen, hidden]` per batch of windows, in the run's
/// [`HiddenDtype`], in memory or spilled), `report` the records so far.
#[derive(Debug, Clone)]
pub struct PipelineState {
    /// The first block not yet quantized.
    pub next_block: usize,
    /// Hidden states entering `next_block`, per batch of calibration windows.
    pub hidden: HiddenStates,
    /// Records of the finished blocks.
    pub report: PipelineReport,
}

impl PipelineState {
    /// The start of a run: the calibration `windows` (equal, non-zero lengths) embedded
    /// in batches of `batch`, kept as `dtype`, in memory or, with a `spill` directory,
    /// one file per batch there (embedded one batch at a time).
    ///
    /// # Errors
    /// No windows, windows of different lengths, a batch of zero, embedding errors and
    /// the spill's write errors.
    pub fn start(
        model: &Model,
        windows: &[Vec<u32>],
        batch: usize,
        dtype: HiddenDtype,
        spill: Option<&Path>,
    ) -> Result<Self, PipelineError> {
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
        let mut hidden = HiddenStates::resident(Vec::new());
        hidden.keep_in(spill, model.device())?;
        for b in windows.chunks(batch) {
            hidden.push(model.embed(b)?.to_dtype(dtype.dtype())?)?;
        }
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
/// No windows or windows of different lengths, a batch of zero, a GGUF type whose blocks
/// do not divide a layer's width, any error of the forward pass, MagR or the quantizer,
/// named with the block and layer, and the observer's errors. On error the model may
/// hold some quantized blocks.
pub fn quantize_model(
    model: &mut Model,
    windows: &[Vec<u32>],
    settings: &PipelineSettings,
    observer: &mut dyn PipelineObserver,
) -> Result<PipelineReport, PipelineError> {
    let state = PipelineState::start(
        model,
        windows,
        settings.batch,
        settings.hidden_dtype,
        settings.hidden_spill.as_deref(),
    )?;
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
    (state.hidden).keep_in(settings.hidden_spill.as_deref(), model.device())?;
    if state.next_block > blocks || state.hidden.is_empty() {
        return Err(PipelineError::Settings(format!(
            "cannot resume at block {} of a {blocks}-block model with {} batches",
            state.next_block,
            state.hidden.len()
        )));
    }
    let backend = settings.backend.as_ref();
    let preprocessor_choices = settings.preprocessor.choices();
    let candidates = Candidate::all(settings, &preprocessor_choices);
    // The windows of every H the layers need besides all of them.
    let mut captured: Vec<Windows> = Vec::new();
    let mut need = |w: Windows| {
        if w != Windows::All && !captured.contains(&w) {
            captured.push(w);
        }
    };
    if candidates.is_empty() {
        need(settings.preprocessor.windows());
    } else {
        let windows = state.hidden.windows()?;
        if windows < HELD_OUT_EVERY {
            return Err(PipelineError::Settings(format!(
                "choosing settings per layer needs at least {HELD_OUT_EVERY} calibration \
                 windows (one in {HELD_OUT_EVERY} is held out); this run has {windows}"
            )));
        }
        need(Windows::HeldOut);
        for c in &candidates {
            let w = c.preprocessor.windows();
            need(w);
            w.fitting().into_iter().for_each(&mut need);
        }
    }
    for block in state.next_block..blocks {
        observer.progress(Progress::Block { block, blocks });
        // The block's weights in f32 while it is worked on (read once from their file
        // when they are stored there).
        model.make_resident(block)?;
        let report = &mut state.report;
        let groups: Vec<&[LinearInput]> = if settings.true_sequential {
            LinearInput::ALL.iter().map(std::slice::from_ref).collect()
        } else {
            vec![&LinearInput::ALL[..]]
        };
        for inputs in groups {
            let start = Instant::now();
            let hessians = |windows| {
                backend.hessians(model, block, &state.hidden, inputs, windows, settings.par)
            };
            let all = hessians(Windows::All)?;
            let others = captured
                .iter()
                .map(|&w| Ok((w, hessians(w)?)))
                .collect::<Result<Vec<_>, PipelineError>>()?;
            report.seconds.capture += start.elapsed().as_secs_f64();
            for (n, &input) in inputs.iter().enumerate() {
                let layer_hessians = LayerHessians(
                    std::iter::once((Windows::All, &all[n]))
                        .chain(others.iter().map(|(w, h)| (*w, &h[n])))
                        .collect(),
                );
                for &kind in input.consumers() {
                    let record = quantize_layer(
                        model,
                        block,
                        kind,
                        &layer_hessians,
                        &candidates,
                        settings,
                        observer,
                    )
                    .map_err(|e| e.in_layer(block, kind))?;
                    report.seconds.preprocess +=
                        record.preprocess.as_ref().map_or(0.0, |m| m.seconds)
                            + record.choice.as_ref().map_or(0.0, |c| c.seconds);
                    report.seconds.quantize += record.quantize_seconds;
                    report.layers.push(record);
                    observer.progress(Progress::Layer { block, kind });
                }
            }
        }

        let start = Instant::now();
        let dtype = settings.hidden_dtype.dtype();
        for i in 0..state.hidden.len() {
            let h = state.hidden.batch_f32(i, model.device())?;
            let out = model.run_block(block, &h, settings.par)?.to_dtype(dtype)?;
            state.hidden.set(i, out)?;
        }
        state.report.seconds.propagate += start.elapsed().as_secs_f64();
        state.next_block = block + 1;
        observer.block_finished(model, &state)?;
    }
    Ok(state.report)
}

/// A layer's `H` of each set of windows the run captured ([`Windows::All`] first).
struct LayerHessians<'a>(Vec<(Windows, &'a Mat<f32>)>);

impl LayerHessians<'_> {
    /// `H` of `windows`.
    fn get(&self, windows: Windows) -> Result<&Mat<f32>, PipelineError> {
        self.0
            .iter()
            .find(|(w, _)| *w == windows)
            .map(|(_, h)| *h)
            .ok_or_else(|| PipelineError::Settings(format!("no H captured for {windows:?}")))
    }

    /// `H` of the windows that a setting whose `H` is of `windows` is fitted on while
    /// settings are chosen ([`Windows::fitting`]): `H_all - H_held` for all windows.
    fn fitting(&self, windows: Windows) -> Result<Cow<'_, Mat<f32>>, PipelineError> {
        match windows.fitting() {
            Some(w) => Ok(Cow::Borrowed(self.get(w)?)),
            None => {
                let (all, held) = (self.get(Windows::All)?, self.get(Windows::HeldOut)?);
                Ok(Cow::Owned(Mat::from_fn(
                    all.nrows(),
                    all.ncols(),
                    |i, k| all[(i, k)] - held[(i, k)],
                )))
            }
        }
    }
}

/// One setting a layer may be quantized with: a preprocessor (the run's, or one of its
/// [`Preprocessor::choices`]) and a shrink factor of the grid (`None`: the spec's).
#[derive(Clone, Copy)]
struct Candidate<'a> {
    preprocessor: &'a dyn Preprocessor,
    beta: Option<f32>,
}

impl<'a> Candidate<'a> {
    /// Every setting to choose among per layer: each of `choices` (or the run's
    /// preprocessor) with each of the settings' shrink factors; empty when the run
    /// chooses nothing.
    fn all(settings: &'a PipelineSettings, choices: &'a [Box<dyn Preprocessor>]) -> Vec<Self> {
        if choices.is_empty() && settings.beta_choices.is_empty() {
            return Vec::new();
        }
        let preprocessors: Vec<&dyn Preprocessor> = match choices.is_empty() {
            true => vec![settings.preprocessor.as_ref()],
            false => choices.iter().map(Box::as_ref).collect(),
        };
        let betas: Vec<Option<f32>> = match settings.beta_choices.is_empty() {
            true => vec![None],
            false => settings.beta_choices.iter().copied().map(Some).collect(),
        };
        preprocessors
            .iter()
            .flat_map(|&preprocessor| betas.iter().map(move |&beta| Self { preprocessor, beta }))
            .collect()
    }

    /// The preprocessor's parameters, with `beta` when the shrink factor is chosen.
    fn parameters(&self) -> serde_json::Value {
        let mut parameters = self.preprocessor.parameters();
        if let (Some(beta), Some(fields)) = (self.beta, parameters.as_object_mut()) {
            // The f32's shortest decimal (0.95, not 0.949999988079071).
            let decimal: f64 = beta.to_string().parse().unwrap_or(f64::from(beta));
            fields.insert("beta".into(), serde_json::json!(decimal));
        }
        parameters
    }
}

/// Fits each of `candidates` (preprocessor, then the run's quantizer with the candidate's
/// shrink factor, `quantizer(beta)`) on the `H` of the windows not held out
/// ([`LayerHessians::fitting`]) and scores it by the held-out layer loss
/// `tr((W0 - Q)^T H_held (W0 - Q))`; returns the best (the first on a tie) and the scores.
fn choose<'q>(
    candidates: &[Candidate<'_>],
    hessians: &LayerHessians<'_>,
    w0: MatRef<'_, f32>,
    context: &PreprocessContext<'_>,
    quantizer: &dyn Fn(Option<f32>) -> Result<Box<dyn Quantizer + 'q>, PipelineError>,
) -> Result<(usize, LayerChoice), PipelineError> {
    let start = Instant::now();
    let h_held = hessians.get(Windows::HeldOut)?;
    let mut fitting: Vec<(Windows, Cow<'_, Mat<f32>>)> = Vec::new();
    let mut tried = Vec::with_capacity(candidates.len());
    let mut last: Option<(&dyn Preprocessor, Option<Mat<f32>>)> = None;
    for candidate in candidates {
        let windows = candidate.preprocessor.windows();
        let at = match fitting.iter().position(|(w, _)| *w == windows) {
            Some(at) => at,
            None => {
                fitting.push((windows, hessians.fitting(windows)?));
                fitting.len() - 1
            }
        };
        let h_fit: &Mat<f32> = &fitting[at].1;
        // Candidates of one preprocessor are next to each other: it runs once for all
        // its shrink factors.
        let same = last
            .as_ref()
            .is_some_and(|(p, _)| std::ptr::addr_eq(*p, candidate.preprocessor));
        if !same {
            let preprocessed = candidate.preprocessor.apply(w0, h_fit.as_ref(), context)?;
            last = Some((candidate.preprocessor, preprocessed.weights));
        }
        let weights = last
            .as_ref()
            .and_then(|(_, w)| w.as_ref())
            .map_or(w0, |w| w.as_ref());
        let problem = LayerProblem::new(weights, h_fit.as_ref()).with_original(w0);
        let q = quantizer(candidate.beta)?
            .quantize(&problem)?
            .into_dequantized();
        // tr((Q - W0)^T H_held (Q - W0)), per column, by the quadratic MagR minimises.
        let held_out_loss: f64 = Quadratic::with_lipschitz(h_held.as_ref(), w0, 0.0)?
            .column_errors(q.as_ref(), context.par)
            .iter()
            .sum();
        tried.push(ChoiceScore {
            parameters: candidate.parameters(),
            held_out_loss,
        });
    }
    let chosen = (0..tried.len())
        .min_by(|&a, &b| tried[a].held_out_loss.total_cmp(&tried[b].held_out_loss))
        .ok_or_else(|| PipelineError::Settings("no settings to choose among".into()))?;
    let seconds = start.elapsed().as_secs_f64();
    Ok((
        chosen,
        LayerChoice {
            tried,
            chosen,
            seconds,
        },
    ))
}

/// Preprocesses and quantizes layer `kind` of `block` with its `hessians`, hands the
/// result to `observer` and writes the dequantized weights into `model`. With
/// `candidates`, the layer's setting is the one [`choose`] picks, fitted again on all
/// windows (the preprocessor on its own windows' `H`); else the run's.
fn quantize_layer(
    model: &mut Model,
    block: usize,
    kind: LinearKind,
    hessians: &LayerHessians<'_>,
    candidates: &[Candidate<'_>],
    settings: &PipelineSettings,
    observer: &mut dyn PipelineObserver,
) -> Result<LayerRecord, PipelineError> {
    let (outputs, inputs) = model.linear_shape(kind);
    // (out x in) row-major is W (in x out) column-major.
    let w0 = MatRef::from_column_major_slice(&model.linear_weight(block, kind)?, inputs, outputs)
        .to_owned();
    let max_abs_before = max_abs(w0.as_ref());

    let backend = settings.backend.as_ref();
    let spec = settings.layer_spec(model.config(), block, kind)?;
    let context = PreprocessContext {
        spec,
        par: settings.par,
        backend,
    };
    let quantizer = |beta: Option<f32>| -> Result<Box<dyn Quantizer + '_>, PipelineError> {
        let spec = match beta {
            None => spec,
            Some(beta) => settings.spec_with_beta(beta)?,
        };
        Ok(settings.method.quantizer(&QuantizerContext {
            spec,
            act_order: settings.act_order,
            par: settings.par,
            backend,
        }))
    };
    let (setting, layer_choice) = match candidates.is_empty() {
        true => {
            let run = Candidate {
                preprocessor: settings.preprocessor.as_ref(),
                beta: None,
            };
            (run, None)
        }
        false => {
            let (best, record) = choose(candidates, hessians, w0.as_ref(), &context, &quantizer)?;
            (candidates[best], Some(record))
        }
    };
    let h = hessians.get(Windows::All)?;
    let h_preprocess = hessians.get(setting.preprocessor.windows())?;
    let preprocessor = setting.preprocessor;
    let preprocessed = preprocessor.apply(w0.as_ref(), h_preprocess.as_ref(), &context)?;
    for warning in preprocessed.record.iter().flat_map(|r| &r.warnings) {
        observer.warning(block, kind, warning);
    }
    let to_quantize = preprocessed.weights.as_ref().unwrap_or(&w0);
    let max_abs_after = max_abs(to_quantize.as_ref());
    let magnitudes = MagnitudeHistogram::new(
        weights(w0.as_ref()),
        weights(to_quantize.as_ref()),
        max_abs_before,
    );
    let problem = LayerProblem::new(to_quantize.as_ref(), h.as_ref()).with_original(w0.as_ref());

    let start = Instant::now();
    let q: QuantizedLinear = quantizer(setting.beta)?.quantize(&problem)?;
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
        preprocess: preprocessed.record,
        max_abs_before,
        max_abs_after,
        magnitudes,
        layer_loss,
        quantize_seconds,
        choice: layer_choice,
    })
}

/// The entries of `w`, column by column.
fn weights(w: MatRef<'_, f32>) -> impl Iterator<Item = f32> + '_ {
    (0..w.ncols()).flat_map(move |j| w.col(j).iter().copied())
}

fn max_abs(w: MatRef<'_, f32>) -> f32 {
    prox_opt::column_max_abs(w)
        .into_iter()
        .fold(0.0f32, f32::max)
}
