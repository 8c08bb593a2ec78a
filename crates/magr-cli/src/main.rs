//! `magr`: quantize a Llama-family model with MagR in front of RTN, OPTQ or OPTQ plus
//! coordinate descent, and evaluate perplexity.
//!
//! ```text
//! magr quantize [--model PATH] [--bits 4] [--group-size G] [--method optq] [--no-magr]
//!               [--out DIR [--formats fake-quant,gptq] [--resume] [--force]] ...
//! magr eval [--model PATH] [--eval-text PATH] [--eval-seqlen 2048] [--eval-windows 40]
//! magr inspect PATH
//! ```
//!
//! Logs and progress go to stderr; the result lines (perplexities, times) to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use faer::Par;
use indicatif::{ProgressBar, ProgressStyle};
use magr::llama_io::{self, LinearKind, Model, WeightDtype, data};
use magr::quantizers::{GridSpec, QuantizedLinear};
use magr::{
    GptqCheckpoint, MagrHessian, MagrSettings, Method, PipelineError, PipelineObserver,
    PipelineReport, PipelineSettings, PipelineState, Progress, RunCheckpoint,
    continue_quantize_model, quantize_model, run_fingerprint,
};
use serde::Serialize;

mod plot;

#[derive(Parser)]
#[command(
    name = "magr",
    version,
    about = "MagR post-training quantization of Llama models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars or logs (errors and results only).
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize every linear layer (layer-wise, with calibration text), evaluate, write.
    Quantize(QuantizeArgs),
    /// Perplexity of a model on a text (the papers' protocol).
    Eval(EvalArgs),
    /// Configuration, metadata and tensors (name, dtype, shape, size) of a Hugging Face
    /// directory or a GGUF file, from the headers only.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct InspectArgs {
    /// A Hugging Face directory or a .gguf file.
    path: PathBuf,
}

#[derive(Args)]
struct ModelArg {
    /// A Hugging Face directory or a .gguf file [default: the fetched SmolLM2 GGUF,
    /// see `cargo xtask fetch`, or MAGR_MODEL].
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct EvalTextArgs {
    /// Evaluation text [default: WikiText-2 test from the data directory, lines joined
    /// by a blank line].
    #[arg(id = "eval_text", long = "eval-text")]
    text: Option<PathBuf>,
    /// Evaluation window length in tokens.
    #[arg(id = "eval_seqlen", long = "eval-seqlen", default_value_t = 2048)]
    seqlen: usize,
    /// Evaluate the first N windows only (0: no evaluation).
    #[arg(id = "eval_windows", long = "eval-windows", default_value_t = 40)]
    windows: usize,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    eval: EvalTextArgs,
    /// Also write the result (perplexity, windows, tokens, time) to this JSON file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// What `magr quantize --out` writes besides the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum FormatArg {
    /// `fake-quant/`: a Hugging Face directory with the dequantized weights.
    FakeQuant,
    /// `gptq/`: the packed GPTQ checkpoint (int32 codes, f16 scales, `quantization_config`).
    Gptq,
    /// Reports only.
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    /// Round to nearest.
    Rtn,
    /// OPTQ (GPTQ).
    Optq,
    /// OPTQ then coordinate-descent sweeps (the paper's OPTQ-dagger).
    OptqCd,
}

#[derive(Clone, Copy, ValueEnum)]
enum HessianArg {
    /// All calibration windows.
    All,
    /// The last window only (the reference code).
    Last,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
struct QuantizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Bits per weight: 2, 3, 4 or 8.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Inputs per group (one grid per group); per output channel when absent.
    #[arg(long)]
    group_size: Option<usize>,
    /// Symmetric grids.
    #[arg(long)]
    symmetric: bool,
    /// Grid shrink factor [default: the reference's: 1.0 at 4 bits, 0.9 at 3, 0.8 at 2
    /// per channel; 0.95 with groups].
    #[arg(long)]
    beta: Option<f32>,
    /// The quantizer.
    #[arg(long, value_enum, default_value_t = MethodArg::Optq)]
    method: MethodArg,
    /// Coordinate-descent sweeps (method optq-cd).
    #[arg(long, default_value_t = 1)]
    sweeps: usize,
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
    /// Skip MagR (plain RTN / OPTQ).
    #[arg(long)]
    no_magr: bool,
    /// MagR's alpha [default: 1e-3 per channel, 1e-4 with groups].
    #[arg(long)]
    alpha: Option<f64>,
    /// MagR iterations.
    #[arg(long, default_value_t = 200)]
    magr_iters: usize,
    /// FISTA for MagR instead of plain proximal gradient.
    #[arg(long)]
    fista: bool,
    /// Which calibration tokens form MagR's H.
    #[arg(long, value_enum, default_value_t = HessianArg::All)]
    magr_hessian: HessianArg,
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
    /// Also evaluate the model before quantizing.
    #[arg(long)]
    eval_float: bool,
    #[command(flatten)]
    eval: EvalTextArgs,
    /// Output directory: report.json, report.md and the formats asked for, each in its
    /// own subdirectory. Written as `OUT.partial`, renamed when complete.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Model formats to write under `--out` (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fake-quant,gptq"
    )]
    formats: Vec<FormatArg>,
    /// Continue a killed run from the blocks checkpointed in `OUT.partial` (same
    /// model, settings and calibration); the output is byte-identical to an
    /// uninterrupted run's.
    #[arg(long)]
    resume: bool,
    /// Weight dtype of the written directory.
    #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
    dtype: DtypeArg,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Quantize(args) => quantize(args, cli.quiet),
        Command::Eval(args) => eval(args, cli.quiet),
        Command::Inspect(args) => inspect(&args.path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("magr: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(quiet: bool, message: &str) {
    if !quiet {
        eprintln!("magr: {message}");
    }
}

fn load_model(arg: &ModelArg, quiet: bool) -> Result<(Model, PathBuf), Error> {
    let path = match &arg.model {
        Some(p) => p.clone(),
        None => data::default_model_path()?,
    };
    let start = Instant::now();
    let model = Model::load(&path)?;
    let c = model.config();
    log(
        quiet,
        &format!(
            "loaded {} in {:.1} s: {} blocks, hidden {}, {} heads / {} KV heads, vocab {}",
            path.display(),
            start.elapsed().as_secs_f64(),
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size
        ),
    );
    Ok((model, path))
}

/// The evaluation of one model: perplexity and throughput.
#[derive(Serialize)]
struct Evaluation {
    text: PathBuf,
    seqlen: usize,
    windows: usize,
    tokens_scored: usize,
    ppl: f64,
    seconds: f64,
    tokens_per_second: f64,
}

/// The evaluation text's path and tokens, read and tokenized once per run; `None`
/// when no evaluation is asked for (`--eval-windows 0`).
fn eval_tokens(model: &Model, args: &EvalTextArgs) -> Result<Option<(PathBuf, Vec<u32>)>, Error> {
    if args.windows == 0 {
        return Ok(None);
    }
    let (path, text) = match &args.text {
        Some(p) => (p.clone(), data::read_text(p)?),
        None => {
            let path = data::data_file(data::WIKITEXT2_TEST)?;
            let text = data::join_lines(&data::read_text(&path)?);
            (path, text)
        }
    };
    let tokens = model.encode(&text)?;
    Ok(Some((path, tokens)))
}

fn evaluate(
    model: &Model,
    (path, tokens): &(PathBuf, Vec<u32>),
    args: &EvalTextArgs,
    label: &str,
    quiet: bool,
) -> Result<Evaluation, Error> {
    let bar = bar(
        quiet,
        args.windows.min(tokens.len() / args.seqlen.max(1)) as u64,
        label,
    );
    let report = llama_io::perplexity(
        model,
        tokens,
        args.seqlen,
        Some(args.windows),
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    println!(
        "{label}: ppl {:.4} on {} ({} windows of {}, {} tokens scored), {:.1} s, {:.1} tokens/s",
        report.ppl,
        path.display(),
        report.windows,
        args.seqlen,
        report.tokens_scored,
        report.seconds,
        report.tokens_per_second
    );
    Ok(Evaluation {
        text: path.clone(),
        seqlen: args.seqlen,
        windows: report.windows,
        tokens_scored: report.tokens_scored,
        ppl: report.ppl,
        seconds: report.seconds,
        tokens_per_second: report.tokens_per_second,
    })
}

fn bar(quiet: bool, len: u64, label: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} (ETA {eta}) {msg}",
        )
        .expect("a valid template"),
    );
    bar.set_prefix(label.to_string());
    bar
}

fn eval(args: &EvalArgs, quiet: bool) -> Result<(), Error> {
    let (model, _) = load_model(&args.model, quiet)?;
    let text = eval_tokens(&model, &args.eval)?.ok_or("--eval-windows 0: nothing to evaluate")?;
    let evaluation = evaluate(&model, &text, &args.eval, "model", quiet)?;
    if let Some(path) = &args.report {
        write_atomic(path, &serde_json::to_string_pretty(&evaluation)?)?;
    }
    Ok(())
}

/// `magr inspect`: printed in one write, so that a closed pipe (`| head`) ends quietly.
fn inspect(path: &Path) -> Result<(), Error> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let inventory = llama_io::inspect(path)?;
    let mut text = String::new();
    writeln!(text, "{}: {}", inventory.path.display(), inventory.format)?;
    for (key, value) in &inventory.metadata {
        let chars = value.chars().count();
        let value = if chars > 200 {
            let head: String = value.chars().take(200).collect();
            format!("{head}... ({chars} characters)")
        } else {
            value.clone()
        };
        writeln!(text, "  {key}: {value}")?;
    }
    let width = inventory
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4);
    writeln!(
        text,
        "\n  {:width$}  {:>6}  {:>16}  {:>12}",
        "tensor", "dtype", "shape", "bytes"
    )?;
    for t in &inventory.tensors {
        let shape = format!("{:?}", t.shape);
        writeln!(
            text,
            "  {:width$}  {:>6}  {:>16}  {:>12}",
            t.name, t.dtype, shape, t.bytes
        )?;
    }
    let bytes: u64 = inventory.tensors.iter().map(|t| t.bytes).sum();
    writeln!(
        text,
        "\n  {} tensors, {:.1} MB of data",
        inventory.tensors.len(),
        bytes as f64 / 1e6
    )?;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Everything `report.json` holds.
#[derive(Serialize)]
struct RunReport<'a> {
    model: &'a Path,
    formats: &'a [FormatArg],
    settings: SettingsRecord,
    float: Option<Evaluation>,
    quantized: Option<Evaluation>,
    pipeline: &'a PipelineReport,
    seconds_total: f64,
}

#[derive(Serialize)]
struct SettingsRecord {
    bits: u32,
    group_size: Option<usize>,
    symmetric: bool,
    beta: f32,
    method: Method,
    magr: Option<MagrSettings>,
    act_order: bool,
    true_sequential: bool,
    calibration_text: PathBuf,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
}

fn quantize(args: &QuantizeArgs, quiet: bool) -> Result<(), Error> {
    let total = Instant::now();
    // Settings first: a bad flag fails before anything is loaded.
    let spec = match args.beta {
        Some(beta) => GridSpec::new(args.bits, args.group_size, args.symmetric, beta)?,
        None => {
            let reference = GridSpec::reference(args.bits, args.group_size)?;
            GridSpec::new(args.bits, args.group_size, args.symmetric, reference.beta())?
        }
    };
    let method = match args.method {
        MethodArg::Rtn => Method::Rtn,
        MethodArg::Optq => Method::Optq,
        MethodArg::OptqCd => Method::OptqCd {
            sweeps: args.sweeps,
            lambda: args.cd_lambda,
        },
    };
    let magr = (!args.no_magr).then(|| {
        let reference = MagrSettings::reference(&spec);
        MagrSettings {
            alpha: args.alpha.unwrap_or(reference.alpha),
            iterations: args.magr_iters,
            fista: args.fista,
            hessian: match args.magr_hessian {
                HessianArg::All => MagrHessian::AllSamples,
                HessianArg::Last => MagrHessian::LastSample,
            },
        }
    });
    if args.formats.contains(&FormatArg::None) && args.formats.len() > 1 {
        return Err("--formats none cannot be combined with other formats".into());
    }
    if args.resume && args.out.is_none() {
        return Err("--resume needs --out (the checkpoint lives in OUT.partial)".into());
    }
    // The output's staging directory is made before anything is loaded: an unwritable
    // or existing output fails at once.
    let staging = args
        .out
        .as_deref()
        .map(|out| Staging::create(out, args.force, args.resume))
        .transpose()?;
    let result = quantize_into(args, quiet, total, spec, method, magr, staging.as_ref());
    if let (Err(e), Some(staging)) = (&result, &staging)
        && let Some(done) = staging.checkpoint_blocks()
    {
        staging.keep();
        return Err(format!(
            "{e}\n{done} finished blocks are kept in {}: run the same command with --resume to continue",
            staging.partial.display()
        )
        .into());
    }
    result?;
    if let Some(staging) = staging {
        let out = staging.out.clone();
        staging.commit()?;
        log(quiet, &format!("wrote {}", out.display()));
    }
    Ok(())
}

/// The run of `magr quantize` after the flags are checked, writing into `staging`.
fn quantize_into(
    args: &QuantizeArgs,
    quiet: bool,
    total: Instant,
    spec: GridSpec,
    method: Method,
    magr: Option<MagrSettings>,
    staging: Option<&Staging>,
) -> Result<(), Error> {
    let (mut model, model_path) = load_model(&args.model, quiet)?;
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

    let eval_text = eval_tokens(&model, &args.eval)?;
    let float = match &eval_text {
        Some(text) if args.eval_float => Some(evaluate(&model, text, &args.eval, "float", quiet)?),
        _ => None,
    };

    let settings = PipelineSettings {
        spec,
        method,
        magr,
        act_order: args.act_order,
        true_sequential: args.true_sequential,
        batch: args.batch,
        par: Par::rayon(0),
    };
    let checkpoint = staging.map(|s| {
        let source = format!("model {}; formats {:?}", model_path.display(), args.formats);
        RunCheckpoint::new(
            s.checkpoint_dir(),
            run_fingerprint(&source, &settings, &windows),
        )
    });
    let mut gptq = (staging.is_some() && args.formats.contains(&FormatArg::Gptq))
        .then(|| GptqCheckpoint::new(spec, args.act_order));
    let resumed = match &checkpoint {
        Some(c) if args.resume => c.load(&mut model, gptq.as_mut())?,
        _ => None,
    };
    match &resumed {
        Some(state) => log(
            quiet,
            &format!("resuming after {} finished blocks", state.next_block),
        ),
        None if args.resume => log(quiet, "no checkpoint to resume from: starting afresh"),
        None => {}
    }
    let label = format!(
        "{}{} w{}{}",
        if magr.is_some() { "MagR+" } else { "" },
        match args.method {
            MethodArg::Rtn => "RTN",
            MethodArg::Optq => "OPTQ",
            MethodArg::OptqCd => "OPTQ+CD",
        },
        args.bits,
        args.group_size.map_or(String::new(), |g| format!(" g{g}"))
    );
    let blocks = model.num_blocks();
    let bar = bar(quiet, (blocks * 7) as u64, &label);
    let mut observer = RunObserver {
        bar: &bar,
        checkpoint: checkpoint.as_ref(),
        gptq: gptq.as_mut(),
    };
    let report = match resumed {
        Some(state) => {
            bar.set_position((state.next_block * 7) as u64);
            continue_quantize_model(&mut model, state, &settings, &mut observer)?
        }
        None => quantize_model(&mut model, &windows, &settings, &mut observer)?,
    };
    bar.finish_and_clear();
    let s = &report.seconds;
    println!(
        "{label}: quantized in {:.1} s (capture {:.1} s, MagR {:.1} s, quantizer {:.1} s, propagate {:.1} s); summed layer loss {:.4e}",
        s.embed + s.capture + s.magr + s.quantize + s.propagate,
        s.capture,
        s.magr,
        s.quantize,
        s.propagate,
        report.layers.iter().map(|l| l.layer_loss).sum::<f64>()
    );
    let quantized = eval_text
        .as_ref()
        .map(|text| evaluate(&model, text, &args.eval, &label, quiet))
        .transpose()?;

    if let Some(staging) = staging {
        let dtype = match args.dtype {
            DtypeArg::F32 => WeightDtype::F32,
            DtypeArg::F16 => WeightDtype::F16,
            DtypeArg::Bf16 => WeightDtype::BF16,
        };
        let run = RunReport {
            model: &model_path,
            formats: &args.formats,
            settings: SettingsRecord {
                bits: spec.bits(),
                group_size: spec.group_size(),
                symmetric: spec.symmetric(),
                beta: spec.beta(),
                method,
                magr,
                act_order: args.act_order,
                true_sequential: args.true_sequential,
                calibration_text: calib_path,
                nsamples: args.nsamples,
                seqlen: args.seqlen,
                seed: args.seed,
            },
            float,
            quantized,
            pipeline: &report,
            seconds_total: total.elapsed().as_secs_f64(),
        };
        write_outputs(&model, &staging.partial, gptq.as_ref(), dtype, &run, quiet)?;
    }
    Ok(())
}

/// Writes `text` to `path` under a temporary name, then renames it.
fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, text).map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// `report.md`: the settings, the perplexities and times, and one row per layer.
fn markdown_report(run: &RunReport) -> String {
    use std::fmt::Write;
    let s = &run.settings;
    let mut md = String::new();
    let _ = writeln!(md, "# magr quantize report\n");
    let _ = writeln!(md, "- model: `{}`", run.model.display());
    let _ = writeln!(
        md,
        "- grid: {} bits, {}, {}, beta {}",
        s.bits,
        s.group_size
            .map_or("per channel".to_string(), |g| format!("groups of {g}")),
        if s.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        s.beta
    );
    let _ = writeln!(md, "- method: {:?}, act-order {}", s.method, s.act_order);
    let _ = writeln!(
        md,
        "- MagR: {}",
        s.magr.map_or("off".to_string(), |m| format!("{m:?}"))
    );
    let _ = writeln!(
        md,
        "- calibration: {} windows of {} tokens from `{}`, seed {}",
        s.nsamples,
        s.seqlen,
        s.calibration_text.display(),
        s.seed
    );
    for (label, e) in [("float", &run.float), ("quantized", &run.quantized)] {
        if let Some(e) = e {
            let _ = writeln!(
                md,
                "- {label} perplexity: **{:.4}** ({} windows of {}, {} tokens scored, `{}`)",
                e.ppl,
                e.windows,
                e.seqlen,
                e.tokens_scored,
                e.text.display()
            );
        }
    }
    if s.magr.is_some() {
        let _ = writeln!(
            md,
            "- weight magnitudes: ![before and after MagR](magnitudes.svg)"
        );
    }
    let t = &run.pipeline.seconds;
    let _ = writeln!(
        md,
        "- seconds: embed {:.1}, capture {:.1}, MagR {:.1}, quantizer {:.1}, propagate {:.1}; total run {:.1}\n",
        t.embed, t.capture, t.magr, t.quantize, t.propagate, run.seconds_total
    );
    let _ = writeln!(
        md,
        "| block | layer | in x out | max abs before | max abs after MagR | MagR objective before -> after | layer loss |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for l in &run.pipeline.layers {
        let magr = l.magr.as_ref().map_or("-".to_string(), |m| {
            format!("{:.4e} -> {:.4e}", m.objective_before, m.objective_after)
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} x {} | {:.4} | {:.4} | {} | {:.4e} |",
            l.block,
            l.layer,
            l.shape[0],
            l.shape[1],
            l.max_abs_before,
            l.max_abs_after,
            magr,
            l.layer_loss
        );
    }
    md
}

/// The output directory while it is being written: `OUT.partial` beside `OUT`, holding
/// the run checkpoint (`checkpoint/`) while blocks are quantized; renamed to `OUT` when
/// everything is in it, removed if the run fails before any block is checkpointed.
struct Staging {
    out: PathBuf,
    partial: PathBuf,
    force: bool,
    keep: std::cell::Cell<bool>,
}

impl Staging {
    /// Refuses an existing `out` without `force`; creates `OUT.partial`, replacing a
    /// leftover one unless `resume` (one holding checkpointed blocks only with `force`).
    fn create(out: &Path, force: bool, resume: bool) -> Result<Self, Error> {
        if out.exists() && !force {
            return Err(format!("{} exists: pass --force to replace it", out.display()).into());
        }
        let mut partial = out.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        if partial.exists() && !resume {
            let done = checkpointed_blocks(&partial);
            if let Some(done) = done.filter(|_| !force) {
                return Err(format!(
                    "{} holds {done} checkpointed blocks of an interrupted run: pass --resume to \
                     continue it, or --force to start over",
                    partial.display()
                )
                .into());
            }
            std::fs::remove_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| {
            format!(
                "cannot create the output directory {}: {e}",
                partial.display()
            )
        })?;
        Ok(Staging {
            out: out.to_path_buf(),
            partial,
            force,
            keep: std::cell::Cell::new(false),
        })
    }

    fn checkpoint_dir(&self) -> PathBuf {
        checkpoint_dir(&self.partial)
    }

    /// Blocks saved in the checkpoint, if any.
    fn checkpoint_blocks(&self) -> Option<usize> {
        checkpointed_blocks(&self.partial).filter(|&n| n > 0)
    }

    /// Keep `OUT.partial` when dropped (a failed run with checkpointed blocks).
    fn keep(&self) {
        self.keep.set(true);
    }

    /// Removes the checkpoint and renames the staging directory to the output.
    fn commit(self) -> Result<(), Error> {
        let checkpoint = self.checkpoint_dir();
        if checkpoint.exists() {
            std::fs::remove_dir_all(&checkpoint)
                .map_err(|e| format!("{}: {e}", checkpoint.display()))?;
        }
        if self.out.exists() && self.force {
            std::fs::remove_dir_all(&self.out)
                .map_err(|e| format!("{}: {e}", self.out.display()))?;
        }
        std::fs::rename(&self.partial, &self.out)
            .map_err(|e| format!("{}: {e}", self.out.display()))?;
        Ok(())
    }
}

/// Where a staging directory keeps its run checkpoint.
fn checkpoint_dir(partial: &Path) -> PathBuf {
    partial.join("checkpoint")
}

/// Blocks saved in the run checkpoint of the staging directory `partial`, if a state is
/// saved there.
fn checkpointed_blocks(partial: &Path) -> Option<usize> {
    RunCheckpoint::new(checkpoint_dir(partial), String::new()).blocks_done()
}

impl Drop for Staging {
    /// A run that fails before checkpointing a block leaves no partial output behind.
    fn drop(&mut self) {
        if !self.keep.get() && self.partial.exists() {
            let _ = std::fs::remove_dir_all(&self.partial);
        }
    }
}

/// The pipeline observer of `magr quantize`: the progress bar, the packed layers (when
/// the GPTQ format is asked for) and the run checkpoint (with `--out`).
struct RunObserver<'a> {
    bar: &'a ProgressBar,
    checkpoint: Option<&'a RunCheckpoint>,
    gptq: Option<&'a mut GptqCheckpoint>,
}

impl PipelineObserver for RunObserver<'_> {
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

    fn layer_quantized(
        &mut self,
        block: usize,
        kind: LinearKind,
        quantized: &QuantizedLinear,
    ) -> Result<(), PipelineError> {
        match self.gptq.as_deref_mut() {
            Some(gptq) => gptq.add(block, kind, quantized),
            None => Ok(()),
        }
    }

    fn block_finished(
        &mut self,
        model: &Model,
        state: &PipelineState,
    ) -> Result<(), PipelineError> {
        match self.checkpoint {
            Some(c) => c.save(model, state, self.gptq.as_deref()),
            None => Ok(()),
        }
    }
}

/// Everything under the output directory `dir`: `report.json`, `report.md`, the
/// magnitude plot, and one subdirectory per format (`fake-quant/`, `gptq/`).
fn write_outputs(
    model: &Model,
    dir: &Path,
    gptq: Option<&GptqCheckpoint>,
    dtype: WeightDtype,
    run: &RunReport,
    quiet: bool,
) -> Result<(), Error> {
    if run.formats.contains(&FormatArg::FakeQuant) {
        llama_io::write_hf_dir(model, &dir.join("fake-quant"), dtype, true)?;
    }
    if let Some(gptq) = gptq {
        let format = gptq.write(model, &dir.join("gptq"), dtype, true)?;
        log(
            quiet,
            &format!(
                "GPTQ checkpoint with zero points in the {} layout",
                format.checkpoint_format()
            ),
        );
    }
    write_atomic(
        &dir.join("report.json"),
        &serde_json::to_string_pretty(run)?,
    )?;
    write_atomic(&dir.join("report.md"), &markdown_report(run))?;
    if run.settings.magr.is_some()
        && let Some(svg) = plot::magnitude_svg(
            &run.pipeline.layers,
            "Weight magnitudes before and after MagR",
        )
    {
        write_atomic(&dir.join("magnitudes.svg"), &svg)?;
    }
    Ok(())
}
