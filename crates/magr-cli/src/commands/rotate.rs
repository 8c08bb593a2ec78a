//! `magr rotate --model IN --out OUT`: the same model with its RMSNorm gains folded into
//! the layers that read them and its residual stream rotated by a random orthogonal
//! matrix (QuaRot's computational invariance, `llama_io::rotate`). It computes the same
//! logits up to f32 rounding, with weights that lie on no grid of the original's: a float
//! model for comparing quantizers when the input is itself dequantized from a grid (as
//! the SmolLM2 GGUF is, from Q4_1). The whole model is held in f32 while it is rotated.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use magr::llama_io::rotate::random_orthogonal;
use magr::llama_io::{GgufFloat, GgufLinears, GgufOptions, Model, WeightDtype};

use crate::args::{Error, ParArg, log};

/// `magr rotate`'s arguments.
#[derive(Args)]
pub struct RotateArgs {
    /// The model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Seed of the rotation: the same seed gives the same matrix.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write: a path ending in `.gguf` gets a GGUF file (every tensor F32, the
    /// input's tokenizer), any other a Hugging Face directory (f32 safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    par: ParArg,
}

/// Loads, folds, rotates and writes the model.
pub fn run(args: &RotateArgs, quiet: bool) -> Result<(), Error> {
    let gguf = args.out.extension().is_some_and(|e| e == "gguf");
    if args.out.exists() && !args.force {
        return Err(format!("--out {} exists (--force replaces it)", args.out.display()).into());
    }
    let start = Instant::now();
    let mut model = Model::load(&args.model)?;
    let d = model.config().hidden_size;
    model.fold_norm_gains()?;
    let q = random_orthogonal(d, args.seed);
    model.rotate_residual(q.as_ref(), args.par.par())?;
    log(
        quiet,
        &format!(
            "rotated {} by a random orthogonal {d} x {d} matrix (seed {}) in {:.1} s",
            args.model.display(),
            args.seed,
            start.elapsed().as_secs_f64()
        ),
    );
    if gguf {
        let options = GgufOptions {
            // llama.cpp's `LLAMA_FTYPE_ALL_F32`.
            file_type: Some(0),
            float: GgufFloat::F32,
            ..GgufOptions::default()
        };
        magr::llama_io::write_gguf(&model, &args.out, &options, &GgufLinears::new())?;
    } else {
        magr::llama_io::write_hf_dir(&model, &args.out, WeightDtype::F32, args.force)?;
    }
    log(quiet, &format!("wrote {}", args.out.display()));
    Ok(())
}
