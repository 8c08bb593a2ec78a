//! `magr gen-model --shape llama-7b --out DIR`: a model of a real shape with random
//! weights (f16 safetensors, shards, byte-level tokenizer), for measuring speed and
//! memory at sizes whose checkpoints cannot be fetched here.

use std::path::PathBuf;

use clap::Args;
use magr::llama_io::generate::{SHAPES, shape, write_random_model};

use crate::args::{Error, bar, log};

/// `magr gen-model`'s arguments.
#[derive(Args)]
pub struct GenModelArgs {
    /// The shape: llama-7b, llama-70b or tiny (see --help for each).
    #[arg(long, default_value = "llama-7b", value_parser = shape_name, long_help = shapes_help())]
    shape: String,
    /// Keep only the first N blocks (the widths stay those of the shape).
    #[arg(long)]
    blocks: Option<usize>,
    /// Seed of the weights: the same seed gives the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The Hugging Face directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

fn shape_name(name: &str) -> Result<String, String> {
    match shape(name) {
        Some(_) => Ok(name.to_string()),
        None => Err(format!(
            "unknown shape; expected one of: {}",
            SHAPES.map(|(n, _)| n).join(", ")
        )),
    }
}

fn shapes_help() -> String {
    let mut help = String::from("The shape of the model:");
    for (name, line) in SHAPES {
        help.push_str(&format!("\n  {name}: {line}"));
    }
    help
}

/// Writes the model, with a bar over its shards.
pub fn run(args: &GenModelArgs, quiet: bool) -> Result<(), Error> {
    let mut config = shape(&args.shape).expect("checked by clap");
    if let Some(blocks) = args.blocks {
        if blocks == 0 || blocks > config.num_hidden_layers {
            return Err(format!(
                "--blocks {blocks}: the {} shape has 1 to {} blocks",
                args.shape, config.num_hidden_layers
            )
            .into());
        }
        config.num_hidden_layers = blocks;
    }
    let shards = config.num_hidden_layers + 1;
    let bar = bar(quiet, shards as u64, "gen-model");
    write_random_model(&config, &args.out, args.seed, args.force, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    log(
        quiet,
        &format!(
            "wrote {} ({}, {} blocks, seed {})",
            args.out.display(),
            args.shape,
            config.num_hidden_layers,
            args.seed
        ),
    );
    Ok(())
}
