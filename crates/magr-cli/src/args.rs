//! What the subcommands share: the model and evaluation-text arguments, parallelism,
//! logging and progress bars, loading a model and evaluating it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use faer::Par;
use indicatif::{ProgressBar, ProgressStyle};
use magr::candle_core::{self, Device};
use magr::llama_io::{Model, data};
use magr::magr_report::Evaluation;

/// The error of a subcommand, printed as `magr: error: ...`.
pub type Error = Box<dyn std::error::Error>;

/// `--model` and `--device`.
#[derive(Args)]
pub struct ModelArg {
    /// A Hugging Face directory or a .gguf file [default: the fetched SmolLM2 GGUF,
    /// see `cargo xtask fetch`, or MAGR_MODEL].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the forward pass and the heavy work run: `cpu` (faer), or `cuda` / `cuda:N`
    /// (candle on GPU N; needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = device_name)]
    device: DeviceName,
}

/// A `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// The CPU, with faer.
    Cpu,
    /// GPU N, with candle.
    Cuda(usize),
}

pub fn device_name(text: &str) -> Result<DeviceName, String> {
    match text {
        "cpu" => Ok(DeviceName::Cpu),
        "cuda" => Ok(DeviceName::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceName::Cuda)
            .ok_or_else(|| "expected cpu, cuda or cuda:N".to_string()),
    }
}

impl ModelArg {
    /// The GPU of `--device`, opened (`None` for the CPU).
    ///
    /// # Errors
    /// A GPU that cannot be opened, or a build without the `cuda` feature, named.
    pub fn gpu(&self) -> Result<Option<Device>, Error> {
        open_device(self.device, "--device")
    }

    /// The `--device` value.
    pub fn device(&self) -> DeviceName {
        self.device
    }
}

/// The GPU named by `flag`'s value `name`, opened (`None` for the CPU).
///
/// # Errors
/// A GPU that cannot be opened, or a build without the `cuda` feature, named with `flag`.
pub fn open_device(name: DeviceName, flag: &str) -> Result<Option<Device>, Error> {
    match name {
        DeviceName::Cpu => Ok(None),
        DeviceName::Cuda(n) => Device::new_cuda(n).map(Some).map_err(|e| match e {
            candle_core::Error::NotCompiledWithCudaSupport => format!(
                "{flag} cuda:{n}: this magr was built without the `cuda` feature \
                     (`cargo build --release -p magr-cli --features cuda`, with CUDA's nvcc)"
            )
            .into(),
            // Without candle's backtrace (the message alone).
            e => format!("{flag} cuda:{n}: {}", magr::llama_io::LlamaIoError::from(e)).into(),
        }),
    }
}

/// The evaluation text and its windows.
#[derive(Args)]
pub struct EvalTextArgs {
    /// Evaluation text, read as it is [default: WikiText-2 test from the data directory
    /// (MAGR_DATA_DIR), its lines joined by a blank line as the papers evaluate it; so
    /// naming that file here gives another perplexity than the default].
    #[arg(id = "eval_text", long = "eval-text")]
    text: Option<PathBuf>,
    /// Evaluation window length in tokens.
    #[arg(id = "eval_seqlen", long = "eval-seqlen", default_value_t = 2048)]
    pub seqlen: usize,
    /// Evaluate the first N windows only (0: no evaluation).
    #[arg(id = "eval_windows", long = "eval-windows", default_value_t = 40)]
    pub windows: usize,
    /// Score only the second half of each window, as llama.cpp's llama-perplexity does
    /// (the first half is context), instead of every position (the papers' protocol).
    #[arg(long)]
    llama_cpp_protocol: bool,
}

impl EvalTextArgs {
    /// The first scored position of each window: `seqlen / 2` with
    /// `--llama-cpp-protocol`, else 0.
    pub fn first_scored(&self) -> usize {
        if self.llama_cpp_protocol {
            self.seqlen / 2
        } else {
            0
        }
    }
}

/// `--threads`.
#[derive(Args)]
pub struct ParArg {
    /// Threads of the linear algebra (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl ParArg {
    /// The parallelism asked for.
    pub fn par(&self) -> Par {
        match self.threads {
            1 => Par::Seq,
            n => Par::rayon(n),
        }
    }
}

/// Writes `message` to stderr unless `quiet`.
pub fn log(quiet: bool, message: &str) {
    if !quiet {
        eprintln!("magr: {message}");
    }
}

/// A progress bar of `len` steps labelled `label` (hidden when `quiet`).
pub fn bar(quiet: bool, len: u64, label: &str) -> ProgressBar {
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

/// The model of `--model` (or the default one) and its path, with a log line; its forward
/// pass runs on `gpu` when given.
pub fn load_model(
    arg: &ModelArg,
    gpu: Option<&Device>,
    quiet: bool,
) -> Result<(Model, PathBuf), Error> {
    let path = match &arg.model {
        Some(p) => p.clone(),
        None => data::default_model_path()?,
    };
    let model = load_model_at(&path, gpu, quiet)?;
    Ok((model, path))
}

/// The model at `path`, with a log line; its forward pass runs on `gpu` when given.
pub fn load_model_at(
    path: &std::path::Path,
    gpu: Option<&Device>,
    quiet: bool,
) -> Result<Model, Error> {
    let start = Instant::now();
    let mut model = Model::load(path)?;
    if let Some(gpu) = gpu {
        model.set_device(gpu.clone());
    }
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
    Ok(model)
}

/// The evaluation text's path and tokens, read and tokenized once per run; `None`
/// when no evaluation is asked for (`--eval-windows 0`).
pub fn eval_tokens(
    model: &Model,
    args: &EvalTextArgs,
) -> Result<Option<(PathBuf, Vec<u32>)>, Error> {
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

/// Evaluates `model` (against `reference` and its path, when given: [`magr::run::evaluate`])
/// with a progress bar labelled `label`, and prints the result lines.
pub fn evaluate(
    model: &Model,
    reference: Option<(&Model, &std::path::Path)>,
    (path, tokens): &(PathBuf, Vec<u32>),
    args: &EvalTextArgs,
    par: Par,
    (label, quiet): (&str, bool),
) -> Result<Evaluation, Error> {
    let steps = match reference {
        None => args.windows.min(tokens.len() / args.seqlen.max(1)),
        Some(_) => model.num_blocks() + 1,
    };
    let bar = bar(quiet, steps as u64, label);
    let e = magr::run::evaluate(
        model,
        reference,
        path,
        tokens,
        args.seqlen,
        (args.windows, args.first_scored()),
        par,
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let reference_ppl = e
        .reference
        .as_ref()
        .map_or(String::new(), |r| format!(", reference ppl {:.4}", r.ppl));
    println!(
        "{label}: ppl {:.4}{reference_ppl} on {} ({} windows of {}, {} tokens scored), {:.1} s, {:.1} tokens/s",
        e.ppl,
        path.display(),
        e.windows,
        args.seqlen,
        e.tokens_scored,
        e.seconds,
        e.tokens_per_second
    );
    if let Some(r) = &e.reference {
        println!(
            "{label}: KL(reference || model) {:.5} nats per token, top-1 agreement {:.2}%",
            r.mean_kl,
            100.0 * r.top1_agreement
        );
        if let (Some(first), Some(last)) = (r.block_error.first(), r.block_error.last()) {
            let total: f64 = r.layers.iter().map(|l| l.loss_per_token).sum();
            println!(
                "{label}: hidden-state error {first:.4} after block 0, {last:.4} after block {}; \
                 summed layer loss per token {total:.4e} (per block and layer in the JSON report)",
                r.block_error.len() - 1
            );
        }
    }
    Ok(e)
}

/// The peak resident memory of this process so far (`VmHWM` of `/proc/self/status`),
/// where the system tells it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
