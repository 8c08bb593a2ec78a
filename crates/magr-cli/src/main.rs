//! `magr`: quantize a Llama-family model (a preprocessor such as MagR in front of RTN,
//! OPTQ or OPTQ plus coordinate descent), evaluate perplexity, inspect model files.
//!
//! ```text
//! magr quantize [--model PATH] [--bits 4] [--group-size G] [--method optq] [--no-magr]
//!               [--out DIR [--formats fake-quant,gptq] [--resume] [--force]] ...
//! magr eval [--model PATH] [--eval-text PATH] [--eval-seqlen 2048] [--eval-windows 40]
//! magr inspect PATH
//! magr gen-model [--shape llama-7b] [--blocks N] [--seed 0] --out DIR
//! magr rotate --model PATH [--seed 0] --out FILE.gguf|DIR
//! ```
//!
//! One module per subcommand under `commands/` (cargo's layout), the arguments they
//! share in `args.rs`; the run logic is in the library (`magr::run`). Logs and progress
//! go to stderr; the result lines (perplexities, times) to stdout.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod commands;

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
    Quantize(Box<commands::quantize::QuantizeArgs>),
    /// Perplexity of a model on a text (the papers' protocol).
    Eval(commands::eval::EvalArgs),
    /// Configuration, metadata and tensors (name, dtype, shape, size) of a Hugging Face
    /// directory or a GGUF file, from the headers only.
    Inspect(commands::inspect::InspectArgs),
    /// A model of a real shape (llama-7b, ...) with random weights, written as a Hugging
    /// Face directory (f16 shards), for speed and memory measurements.
    GenModel(commands::gen_model::GenModelArgs),
    /// The same model with its norm gains folded into the layers and its residual stream
    /// rotated by a random orthogonal matrix: the same logits, weights on no grid of the
    /// original's.
    Rotate(commands::rotate::RotateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Quantize(args) => commands::quantize::run(args, cli.quiet),
        Command::Eval(args) => commands::eval::run(args, cli.quiet),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::GenModel(args) => commands::gen_model::run(args, cli.quiet),
        Command::Rotate(args) => commands::rotate::run(args, cli.quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("magr: error: {e}");
            ExitCode::FAILURE
        }
    }
}
