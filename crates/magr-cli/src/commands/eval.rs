//! `magr eval`: the perplexity of a model on a text, optionally against a reference.

use std::path::PathBuf;

use clap::Args;

use crate::args::{
    DeviceName, Error, EvalTextArgs, ModelArg, ParArg, device_name, eval_tokens, evaluate,
    load_model, load_model_at, open_device,
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
    /// Where the reference runs [default: the model's --device]: `--reference-device
    /// cpu` with `--device cuda` and the same file as model and reference compares the
    /// GPU's forward pass with the CPU's, block by block.
    #[arg(long, value_parser = device_name, requires = "reference")]
    reference_device: Option<DeviceName>,
    /// Also write the result (perplexity, windows, tokens, time) to this JSON file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Evaluates the model, prints the result line, writes the JSON report if asked.
pub fn run(args: &EvalArgs, quiet: bool) -> Result<(), Error> {
    let gpu = args.model.gpu()?;
    // The model's device is opened once, also when the reference names it.
    let reference_gpu = match args.reference_device {
        Some(name) if name != args.model.device() => open_device(name, "--reference-device")?,
        _ => gpu.clone(),
    };
    let (model, _) = load_model(&args.model, gpu.as_ref(), quiet)?;
    let reference = match &args.reference {
        Some(path) => Some((load_model_at(path, reference_gpu.as_ref(), quiet)?, path)),
        None => None,
    };
    let text = eval_tokens(&model, &args.eval)?.ok_or("--eval-windows 0: nothing to evaluate")?;
    let reference = reference.as_ref().map(|(m, p)| (m, p.as_path()));
    let evaluation = evaluate(
        &model,
        reference,
        &text,
        &args.eval,
        args.par.par(),
        ("model", quiet),
    )?;
    if let Some(path) = &args.report {
        magr::atomic_fs::write(path, serde_json::to_string_pretty(&evaluation)?)?;
    }
    Ok(())
}
