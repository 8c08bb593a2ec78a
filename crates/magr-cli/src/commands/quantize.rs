//! `magr quantize`: flags to settings, then the run (`magr::run`) with progress bars.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use magr::candle_core::Device;
use magr::llama_io::{self, GgufFloat, LinearKind, Model, WeightDtype, data};
use magr::magr_report::RunReport;
use magr::prox_opt::Solver;
use magr::quantizers::{GgmlBlockType, GridFit, GridSpec};
use magr::run::{RunEvents, Staging, run_pipeline, write_outputs};
use magr::{
    Alpha, BETA_CHOICES, CandleBackend, Cpu, FORMATS, FormatContext, GgufPreset, HiddenDtype,
    METHODS, MagrHessian, MethodOptions, OutputFormat, PREPROCESSORS, PipelineSettings,
    PreprocessOptions, Progress, Windows,
};

use crate::args::{
    Error, EvalTextArgs, ModelArg, ParArg, bar, eval_tokens, evaluate, load_model, load_model_at,
    log, peak_rss_bytes,
};

#[derive(Clone, Copy, ValueEnum)]
enum HessianArg {
    /// All calibration windows.
    All,
    /// The last window only (the reference code).
    Last,
    /// Per layer, all windows or the last, whichever gives the smaller held-out layer loss
    /// after quantization (fitted on 3 of every 4 calibration windows, scored on the 4th;
    /// the chosen one is then fitted again).
    Auto,
}

/// The dtype of the calibration hidden states between blocks.
#[derive(Clone, Copy, ValueEnum)]
enum HiddenDtypeArg {
    /// Exact (the reference semantics).
    F32,
    /// Half the memory; each block's input rounded to bfloat16.
    Bf16,
}

/// Where the calibration hidden states are kept between blocks.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HiddenStoreArg {
    /// On disk when they would take more than half of the available memory (and there
    /// is an --out to keep them under), else in memory.
    Auto,
    /// In memory.
    Memory,
    /// On disk beside the run checkpoint in OUT.partial, one file per batch: only the
    /// batch being worked on is in memory.
    Disk,
}

/// MagR's solver.
#[derive(Clone, Copy, ValueEnum)]
enum SolverArg {
    /// Monotone FISTA, at most 40 iterations with the objective test: a fifth of the
    /// products of 200 plain iterations, at or below their objective (the default).
    Fista,
    /// Fixed-step proximal gradient, every iteration (the paper's and its code's method).
    Plain,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum GgufFloatArg {
    /// The input file's type where it was F32, F16 or BF16, else F32.
    AsSource,
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum GridFitArg {
    /// Block parameters from the block's minimum and maximum (llama.cpp without imatrix).
    MinMax,
    /// A search minimising the block's error weighted by diag(H) (llama.cpp's imatrix path).
    Weighted,
}

/// The legacy GGUF block formats (every layer in that type) and llama.cpp's K-quant
/// presets (a type per layer).
fn gguf_types() -> PossibleValuesParser {
    let legacy = GgmlBlockType::LEGACY
        .map(|t| PossibleValue::new(t.name()).help("every linear layer in this block format"));
    let presets = GgufPreset::ALL.map(|p| {
        PossibleValue::new(p.name()).help(format!(
            "llama.cpp's preset: {} by default, more bits for some layers, legacy fallbacks",
            p.default_type()
        ))
    });
    PossibleValuesParser::new(legacy.into_iter().chain(presets))
}

/// The possible values of a flag from a registry's names and help lines.
fn registry(entries: impl Iterator<Item = (&'static str, &'static str)>) -> PossibleValuesParser {
    PossibleValuesParser::new(entries.map(|(name, about)| PossibleValue::new(name).help(about)))
}

fn methods() -> PossibleValuesParser {
    registry(METHODS.iter().map(|e| (e.name, e.about)))
}

fn preprocessors() -> PossibleValuesParser {
    registry(PREPROCESSORS.iter().map(|e| (e.name, e.about)))
}

/// The registered formats, and `none` (reports only).
fn formats() -> PossibleValuesParser {
    registry(
        FORMATS
            .iter()
            .map(|e| (e.name, e.about))
            .chain([("none", "reports only")]),
    )
}

/// The formats written when `--formats` is not given: the registered defaults, or with
/// `--gguf-type` the fake-quant directory and the GGUF file.
fn default_formats(gguf: bool) -> Vec<String> {
    if gguf {
        return vec!["fake-quant".to_string(), "gguf".to_string()];
    }
    FORMATS
        .iter()
        .filter(|e| e.default)
        .map(|e| e.name.to_string())
        .collect()
}

/// `magr quantize`'s arguments.
#[derive(Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Bits per weight: 2, 3, 4 or 8.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Inputs per group (one grid per group; where it does not divide a layer's width, the
    /// last group of each row is shorter); per output channel when absent.
    #[arg(long)]
    group_size: Option<usize>,
    /// Symmetric grids.
    #[arg(long)]
    symmetric: bool,
    /// Grid shrink factor [default: the reference's: 1.0 at 4 bits, 0.9 at 3, 0.8 at 2
    /// per channel; 0.95 with groups], or `auto`: per layer the one of 1, 0.95, ..., 0.7
    /// with the smallest held-out layer loss after quantization (fitted on 3 of every 4
    /// calibration windows, scored on the 4th; with --alpha or --magr-hessian auto, every
    /// pair is tried).
    #[arg(long, value_parser = parse_beta)]
    beta: Option<Beta>,
    /// Quantize onto llama.cpp's block formats (their f16 block parameters) instead of
    /// the GPTQ grid of --bits/--group-size: a legacy type (blocks of 32 inputs) for every
    /// layer, or a K-quant preset choosing each layer's type as llama-quantize does
    /// (super-blocks of 256; layers whose width is not a multiple of 256 fall back to a
    /// legacy type); the gguf format stores the result exactly.
    #[arg(
        long,
        ignore_case = true,
        value_parser = gguf_types(),
        conflicts_with_all = ["group_size", "symmetric", "beta"]
    )]
    gguf_type: Option<String>,
    /// How GGUF block parameters are fitted [weighted by default: on SmolLM2 at Q4_0
    /// (8 x 2048 calibration tokens, 10 evaluation windows) it took RTN from perplexity
    /// 25.56 to 21.88 and OPTQ from 30.39 to 24.07].
    #[arg(long, value_enum, requires = "gguf_type")]
    grid_fit: Option<GridFitArg>,
    /// The quantizer.
    #[arg(long, default_value = "optq", value_parser = methods())]
    method: String,
    /// Coordinate-descent sweeps (method optq-cd) [default: 1].
    #[arg(long)]
    sweeps: Option<usize>,
    /// Damping lambda of the sweeps [default: 0.75 mean(diag H), the reference].
    #[arg(long)]
    cd_lambda: Option<f64>,
    /// OPTQ's act-order (stored as `desc_act`).
    #[arg(long)]
    act_order: bool,
    /// Capture each input of a block after the layers before it are quantized
    /// (q/k/v, then o, then gate/up, then down).
    #[arg(long)]
    true_sequential: bool,
    /// What runs before the quantizer.
    #[arg(long, default_value = "magr", value_parser = preprocessors(), conflicts_with = "no_magr")]
    preprocessor: String,
    /// Skip MagR (plain RTN / OPTQ): `--preprocessor none`.
    #[arg(long)]
    no_magr: bool,
    /// MagR's alpha [default: 1e-3 per channel, 1e-4 with groups], or `auto`: per layer
    /// the one of 0, 1/2, 1, 2, 4, 8, 16 times the default with the smallest held-out layer
    /// loss after quantization (fitted on 3 of every 4 calibration windows, scored on the
    /// 4th; the chosen one is then fitted on all).
    #[arg(long, value_parser = parse_alpha)]
    alpha: Option<Alpha>,
    /// MagR iterations at most [default: 200 with plain, 40 with fista].
    #[arg(long)]
    magr_iters: Option<usize>,
    /// MagR's solver [default: fista].
    #[arg(long, value_enum)]
    magr_solver: Option<SolverArg>,
    /// Which calibration tokens form MagR's H [default: all].
    #[arg(long, value_enum)]
    magr_hessian: Option<HessianArg>,
    /// Calibration text [default: the Wikipedia excerpt from the data directory].
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    nsamples: usize,
    /// Calibration window length in tokens.
    #[arg(long, default_value_t = 2048)]
    seqlen: usize,
    /// Seed of the calibration sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Calibration windows per forward batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The dtype of the calibration hidden states kept between blocks
    /// (nsamples x seqlen x hidden values: 4 GiB in f32 for 128 x 2048 on a 7B model).
    #[arg(long, value_enum, default_value = "f32")]
    hidden_dtype: HiddenDtypeArg,
    /// Where the calibration hidden states are kept between blocks (the output's bytes
    /// do not depend on it).
    #[arg(long, value_enum, default_value = "auto")]
    hidden_store: HiddenStoreArg,
    #[command(flatten)]
    par: ParArg,
    /// Also evaluate the model before quantizing.
    #[arg(long)]
    eval_float: bool,
    /// Evaluate the quantized model against the float model (read again from
    /// `--model`) on the same windows: adds the KL divergence of the next-token
    /// distributions, the top-1 agreement, the float perplexity and, in report.json's
    /// `quantized.reference`, the hidden-state error per block and each layer's loss
    /// per token on the evaluation text (`magr eval --reference`); about three times the
    /// evaluation's time.
    #[arg(long)]
    eval_reference: bool,
    #[command(flatten)]
    eval: EvalTextArgs,
    /// Output directory: report.json, report.md and the formats asked for, each in its
    /// own subdirectory. Written as `OUT.partial`, renamed when complete; missing
    /// directories above it are made.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Model formats to write under `--out` (comma-separated) [default: fake-quant,gptq;
    /// with --gguf-type: fake-quant,gguf].
    #[arg(long, value_delimiter = ',', value_parser = formats())]
    formats: Option<Vec<String>>,
    /// Continue a killed run from the blocks checkpointed in `OUT.partial` (same
    /// model, settings and calibration); the output is byte-identical to an
    /// uninterrupted run's.
    #[arg(long)]
    resume: bool,
    /// Weight dtype of the written Hugging Face directories.
    #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
    dtype: DtypeArg,
    /// Float type of the embeddings, norms and head in the GGUF file (norms are always F32).
    #[arg(long, value_enum, default_value_t = GgufFloatArg::AsSource)]
    gguf_float: GgufFloatArg,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

/// Checks every flag, stages the output, runs, and renames the output into place.
pub fn run(args: &QuantizeArgs, quiet: bool) -> Result<(), Error> {
    let total = Instant::now();
    // Settings first: a bad flag (or a GPU that cannot be opened) fails before anything
    // is loaded.
    let gpu = args.model.gpu()?;
    let settings = settings(args, gpu.as_ref())?;
    let format_names = args
        .formats
        .clone()
        .unwrap_or_else(|| default_formats(args.gguf_type.is_some()));
    if format_names.iter().any(|f| f == "none") && format_names.len() > 1 {
        return Err("--formats none cannot be combined with other formats".into());
    }
    if args.hidden_store == HiddenStoreArg::Disk && args.out.is_none() {
        return Err(
            "--hidden-store disk needs --out (the hidden states are kept beside the checkpoint \
             in OUT.partial)"
                .into(),
        );
    }
    if args.resume && args.out.is_none() {
        return Err("--resume needs --out (the checkpoint lives in OUT.partial)".into());
    }
    if (args.eval_float || args.eval_reference) && args.eval.windows == 0 {
        let flag = if args.eval_float {
            "--eval-float"
        } else {
            "--eval-reference"
        };
        return Err(format!("{flag} needs an evaluation: --eval-windows is 0").into());
    }
    let mut formats = output_formats(args, &format_names, &settings)?;
    // The output's staging directory is made before anything is loaded: an unwritable
    // or existing output fails at once.
    let staging = args
        .out
        .as_deref()
        .map(|out| Staging::create(out, args.force, args.resume))
        .transpose()?;
    if let Err(e) = quantize_into(
        args,
        quiet,
        total,
        (&settings, gpu.as_ref()),
        staging.as_ref(),
        &mut formats,
    ) {
        return Err(match staging.as_ref().and_then(Staging::keep_checkpoint) {
            Some(hint) => format!("{e}\n{hint}").into(),
            None => e,
        });
    }
    if let Some(staging) = staging {
        let out = staging.commit()?;
        log(quiet, &format!("wrote {}", out.display()));
    }
    Ok(())
}

/// The pipeline's settings from the flags; the heavy work on `gpu` when given.
fn settings(args: &QuantizeArgs, gpu: Option<&Device>) -> Result<PipelineSettings, Error> {
    let (spec, gguf_preset) = match (&args.gguf_type, args.beta) {
        (Some(name), _) => {
            if args.act_order {
                return Err(
                    "--act-order cannot be used with --gguf-type: a GGUF row stores its inputs \
                     in order"
                        .into(),
                );
            }
            let fit = match args.grid_fit {
                Some(GridFitArg::MinMax) => GridFit::MinMax,
                Some(GridFitArg::Weighted) | None => GridFit::Weighted,
            };
            match name.parse::<GgufPreset>() {
                Ok(preset) => (GridSpec::ggml(preset.default_type(), fit), Some(preset)),
                Err(_) => (GridSpec::ggml(name.parse::<GgmlBlockType>()?, fit), None),
            }
        }
        (None, Some(Beta::Value(beta))) => (
            GridSpec::new(args.bits, args.group_size, args.symmetric, beta)?,
            None,
        ),
        (None, None | Some(Beta::PerLayer)) => {
            let reference = GridSpec::reference(args.bits, args.group_size)?;
            (
                GridSpec::new(args.bits, args.group_size, args.symmetric, reference.beta())?,
                None,
            )
        }
    };
    let method = magr::method(
        &args.method,
        &MethodOptions {
            sweeps: args.sweeps,
            cd_lambda: args.cd_lambda,
        },
    )?;
    let preprocessor = magr::preprocessor(
        if args.no_magr {
            "none"
        } else {
            &args.preprocessor
        },
        &PreprocessOptions {
            alpha: args.alpha,
            iterations: args.magr_iters,
            solver: args.magr_solver.map(|s| match s {
                SolverArg::Fista => Solver::Fista,
                SolverArg::Plain => Solver::Plain,
            }),
            windows: args.magr_hessian.map(|h| match h {
                HessianArg::All => MagrHessian::Windows(Windows::All),
                HessianArg::Last => MagrHessian::Windows(Windows::Last),
                HessianArg::Auto => MagrHessian::PerLayer,
            }),
        },
        &spec,
    )?;
    Ok(PipelineSettings {
        spec,
        gguf_preset,
        method: Arc::from(method),
        beta_choices: match args.beta {
            Some(Beta::PerLayer) => BETA_CHOICES.to_vec(),
            _ => Vec::new(),
        },
        preprocessor: Arc::from(preprocessor),
        act_order: args.act_order,
        true_sequential: args.true_sequential,
        batch: args.batch,
        hidden_dtype: settings_dtype(args),
        hidden_spill: None,
        par: args.par.par(),
        backend: match gpu {
            None => Arc::new(Cpu),
            Some(device) => Arc::new(CandleBackend::new(device.clone())),
        },
    })
}

/// The output formats of `--formats` (none without `--out`), built from the flags
/// before anything is loaded, so that a format that cannot store the run fails at once.
fn output_formats(
    args: &QuantizeArgs,
    names: &[String],
    settings: &PipelineSettings,
) -> Result<Vec<Box<dyn OutputFormat>>, Error> {
    let dtype = match args.dtype {
        DtypeArg::F32 => WeightDtype::F32,
        DtypeArg::F16 => WeightDtype::F16,
        DtypeArg::Bf16 => WeightDtype::BF16,
    };
    let format_names: Vec<String> = match args.out {
        Some(_) => names.iter().filter(|f| *f != "none").cloned().collect(),
        None => Vec::new(),
    };
    let context = FormatContext {
        spec: settings.spec,
        gguf_preset: settings.gguf_preset,
        act_order: settings.act_order,
        damping: settings.method.damping(),
        dtype,
        gguf_float: match args.gguf_float {
            GgufFloatArg::AsSource => GgufFloat::AsSource,
            GgufFloatArg::F32 => GgufFloat::F32,
            GgufFloatArg::F16 => GgufFloat::F16,
            GgufFloatArg::Bf16 => GgufFloat::BF16,
        },
    };
    let formats = format_names
        .iter()
        .map(|name| magr::output_format(name, &context))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(formats)
}

/// Progress bar and warnings of a run.
struct BarEvents<'a> {
    bar: &'a ProgressBar,
    quiet: bool,
}

impl RunEvents for BarEvents<'_> {
    fn progress(&mut self, progress: Progress) {
        match progress {
            Progress::Block { block, blocks } => self
                .bar
                .set_message(format!("block {}/{blocks}", block + 1)),
            Progress::Layer { kind, .. } => {
                self.bar.inc(1);
                self.bar.set_message(format!("{} done", kind.hf_suffix()));
            }
        }
    }

    fn warning(&mut self, block: usize, kind: LinearKind, warning: &str) {
        if !self.quiet {
            self.bar.suspend(|| {
                log(
                    false,
                    &format!("warning: {}: {warning}", kind.hf_name(block)),
                )
            });
        }
    }
}

/// Where the run keeps its calibration hidden states: the checkpoint's spill directory
/// when `--hidden-store` says disk, or says auto and they would take more than half of
/// the available memory; else `None` (memory).
fn hidden_spill(
    args: &QuantizeArgs,
    model: &Model,
    staging: Option<&Staging>,
    quiet: bool,
) -> Option<PathBuf> {
    let staging = staging?;
    let bytes = (args.nsamples * args.seqlen * model.config().hidden_size) as u64
        * settings_dtype(args).size() as u64;
    let spill = match args.hidden_store {
        HiddenStoreArg::Memory => false,
        HiddenStoreArg::Disk => true,
        HiddenStoreArg::Auto => available_memory().is_some_and(|free| bytes > free / 2),
    };
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let dir = staging.spill_dir();
    match spill {
        true => log(
            quiet,
            &format!(
                "calibration hidden states ({gib:.2} GiB) kept on disk in {}",
                dir.display()
            ),
        ),
        false => log(
            quiet,
            &format!("calibration hidden states ({gib:.2} GiB) kept in memory"),
        ),
    }
    spill.then_some(dir)
}

/// The hidden states' dtype from the flags.
fn settings_dtype(args: &QuantizeArgs) -> HiddenDtype {
    match args.hidden_dtype {
        HiddenDtypeArg::F32 => HiddenDtype::F32,
        HiddenDtypeArg::Bf16 => HiddenDtype::Bf16,
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes, when the system tells it.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The run of `magr quantize` after the flags are checked, writing into `staging`.
fn quantize_into(
    args: &QuantizeArgs,
    quiet: bool,
    total: Instant,
    (settings, gpu): (&PipelineSettings, Option<&Device>),
    staging: Option<&Staging>,
    formats: &mut [Box<dyn OutputFormat>],
) -> Result<(), Error> {
    let format_names: Vec<String> = formats.iter().map(|f| f.name().to_string()).collect();
    let (mut model, model_path) = load_model(&args.model, gpu, quiet)?;
    // Every layer and window length checked against the model before any long work.
    settings.check(model.config(), args.seqlen)?;
    if args.eval.windows > 0 {
        model
            .config()
            .check_window(args.eval.seqlen)
            .map_err(|e| format!("evaluation: {e}"))?;
    }
    let calib_path = match &args.calib {
        Some(p) => p.clone(),
        None => data::data_file(data::ENWIKI_CALIBRATION)?,
    };
    let calib_tokens = model.encode(&data::read_text(&calib_path)?)?;
    let windows =
        llama_io::sample_calibration(&calib_tokens, args.nsamples, args.seqlen, args.seed)
            .map_err(|e| format!("{}: {e}", calib_path.display()))?;
    log(
        quiet,
        &format!(
            "calibration: {} windows of {} tokens from {} ({} tokens), seed {}",
            args.nsamples,
            args.seqlen,
            calib_path.display(),
            calib_tokens.len(),
            args.seed
        ),
    );

    let mut settings = settings.clone();
    settings.hidden_spill = hidden_spill(args, &model, staging, quiet);
    let settings = &settings;

    let eval_text = eval_tokens(&model, &args.eval)?;
    let float = match &eval_text {
        Some(text) if args.eval_float => Some(evaluate(
            &model,
            None,
            text,
            &args.eval,
            settings.par,
            ("float", quiet),
        )?),
        _ => None,
    };

    let label = settings.label();
    let bar = bar(quiet, (model.num_blocks() * 7) as u64, &label);
    if args.resume {
        let done = staging.and_then(Staging::checkpointed_blocks);
        log(
            quiet,
            &match done {
                Some(n) => format!("resuming after {n} finished blocks"),
                None => "no checkpoint to resume from: starting afresh".to_string(),
            },
        );
    }
    let source = format!(
        "model {}; formats {}",
        model_path.display(),
        format_names.join(",")
    );
    let report = run_pipeline(
        &mut model,
        &windows,
        settings,
        &source,
        staging,
        args.resume,
        formats,
        &mut BarEvents { bar: &bar, quiet },
    )?;
    bar.finish_and_clear();
    let s = &report.seconds;
    let preprocess = if settings.preprocessor.is_identity() {
        String::new()
    } else {
        format!(", {} {:.1} s", settings.preprocessor, s.preprocess)
    };
    println!(
        "{label}: quantized in {:.1} s (capture {:.1} s{preprocess}, quantizer {:.1} s, propagate {:.1} s); summed layer loss {:.4e}",
        s.total(),
        s.capture,
        s.quantize,
        s.propagate,
        report.summed_layer_loss()
    );
    let reference = match &eval_text {
        Some(_) if args.eval_reference => Some(load_model_at(&model_path, gpu, quiet)?),
        _ => None,
    };
    let quantized = eval_text
        .as_ref()
        .map(|text| {
            let reference = reference.as_ref().map(|m| (m, model_path.as_path()));
            let par = settings.par;
            evaluate(&model, reference, text, &args.eval, par, (&label, quiet))
        })
        .transpose()?;

    if let Some(staging) = staging {
        let run = RunReport {
            model: model_path,
            formats: format_names,
            settings: settings.record(calib_path, args.nsamples, args.seqlen, args.seed),
            float,
            quantized,
            pipeline: report,
            seconds_total: total.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
        };
        for note in write_outputs(staging.partial(), &model, formats, &run)? {
            log(quiet, &note);
        }
    }
    Ok(())
}

/// `--beta` as given: a value, or `auto` ([`BETA_CHOICES`] per layer).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Beta {
    Value(f32),
    PerLayer,
}

/// `--beta`: a number in (0, 1], or `auto`.
fn parse_beta(s: &str) -> Result<Beta, String> {
    if s == "auto" {
        return Ok(Beta::PerLayer);
    }
    s.parse::<f32>()
        .ok()
        .filter(|b| *b > 0.0 && *b <= 1.0)
        .map(Beta::Value)
        .ok_or_else(|| format!("expected a number in (0, 1] or `auto`, got `{s}`"))
}

/// `--alpha`: a number, or `auto`.
fn parse_alpha(s: &str) -> Result<Alpha, String> {
    if s == "auto" {
        return Ok(Alpha::PerLayer);
    }
    s.parse::<f64>()
        .ok()
        .filter(|a| a.is_finite() && *a >= 0.0)
        .map(Alpha::Value)
        .ok_or_else(|| format!("expected a finite number >= 0 or `auto`, got `{s}`"))
}
