//! `magr inspect PATH`: configuration / metadata and every tensor of a model file, from
//! the headers only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use magr::llama_io;

use crate::args::Error;

/// `magr inspect`'s arguments.
#[derive(Args)]
pub struct InspectArgs {
    /// A Hugging Face directory or a .gguf file.
    path: PathBuf,
}

/// Prints the inventory in one write, so that a closed pipe (`| head`) ends quietly.
pub fn run(args: &InspectArgs) -> Result<(), Error> {
    let inventory = llama_io::inspect(&args.path)?;
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
