//! `magr eval`: the perplexity of a model on a text, optionally against a reference.

use std::path::PathBuf;

use clap::Args;
use magr::magr_report::Evaluation;

use crate::args::{
    Error, EvalTextArgs, ModelArg, ParArg, bar, eval_tokens, evaluate, load_model, load_model_at,
};

/// `magr eval`'s arguments.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    eval: EvalTextArgs,
    #[command(flatten)]
    par: ParArg,
    /// A model of the same shapes (the float original of a quantized model) run beside
    /// it on the same windows: adds the mean KL divergence of the next-token
    /// distributions from the reference's, the top-1 agreement, the reference's
    /// perplexity, and in the JSON report the hidden-state error after each block and
    /// each layer's loss per token on this text.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Also write the result (perplexity, windows, tokens, time) to this JSON file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Evaluates the model, prints the result line, writes the JSON report if asked.
pub fn run(args: &EvalArgs, quiet: bool) -> Result<(), Error> {
    let gpu = args.model.gpu()?;
    let (model, _) = load_model(&args.model, gpu.as_ref(), quiet)?;
    let reference = match &args.reference {
        Some(path) => Some((load_model_at(path, gpu.as_ref(), quiet)?, path)),
        None => None,
    };
    let text = eval_tokens(&model, &args.eval)?.ok_or("--eval-windows 0: nothing to evaluate")?;
    let evaluation = match &reference {
        None => evaluate(&model, &text, &args.eval, args.par.par(), "model", quiet)?,
        Some((reference, path)) => {
            let blocks = model.num_blocks() as u64 + 1;
            let bar = bar(quiet, blocks, "model and reference");
            let e = magr::run::evaluate_against(
                &model,
                (reference, path),
                &text.0,
                &text.1,
                args.eval.seqlen,
                (args.eval.windows, args.eval.first_scored()),
                args.par.par(),
                &mut |done, _| bar.set_position(done as u64),
            )?;
            bar.finish_and_clear();
            print_comparison(&e);
            e
        }
    };
    if let Some(path) = &args.report {
        magr::atomic_fs::write(path, serde_json::to_string_pretty(&evaluation)?)?;
    }
    Ok(())
}

/// The result lines of an evaluation against a reference.
fn print_comparison(e: &Evaluation) {
    let Some(r) = &e.reference else { return };
    println!(
        "model: ppl {:.4}, reference ppl {:.4} on {} ({} windows of {}, {} tokens scored), {:.1} s",
        e.ppl,
        r.ppl,
        e.text.display(),
        e.windows,
        e.seqlen,
        e.tokens_scored,
        e.seconds
    );
    println!(
        "model: KL(reference || model) {:.5} nats per token, top-1 agreement {:.2}%",
        r.mean_kl,
        100.0 * r.top1_agreement
    );
    if let (Some(first), Some(last)) = (r.block_error.first(), r.block_error.last()) {
        let total: f64 = r.layers.iter().map(|l| l.loss_per_token).sum();
        println!(
            "model: hidden-state error {first:.4} after block 0, {last:.4} after block {}; \
             summed layer loss per token {total:.4e} (per block and layer in --report)",
            r.block_error.len() - 1
        );
    }
}
