//! `magr eval`: the perplexity of a model on a text.

use std::path::PathBuf;

use clap::Args;

use crate::args::{Error, EvalTextArgs, ModelArg, ParArg, eval_tokens, evaluate, load_model};

/// `magr eval`'s arguments.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    eval: EvalTextArgs,
    #[command(flatten)]
    par: ParArg,
    /// Also write the result (perplexity, windows, tokens, time) to this JSON file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Evaluates the model, prints the result line, writes the JSON report if asked.
pub fn run(args: &EvalArgs, quiet: bool) -> Result<(), Error> {
    let gpu = args.model.gpu()?;
    let (model, _) = load_model(&args.model, gpu.as_ref(), quiet)?;
    let text = eval_tokens(&model, &args.eval)?.ok_or("--eval-windows 0: nothing to evaluate")?;
    let evaluation = evaluate(&model, &text, &args.eval, args.par.par(), "model", quiet)?;
    if let Some(path) = &args.report {
        magr::atomic_fs::write(path, serde_json::to_string_pretty(&evaluation)?)?;
    }
    Ok(())
}
