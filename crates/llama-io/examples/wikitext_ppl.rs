//! Perplexity of a model on WikiText-2 test (the papers' protocol):
//!
//! `cargo run -p llama-io --release --example wikitext_ppl -- [MODEL] [SEQLEN] [WINDOWS]`
//!
//! MODEL is a Hugging Face directory or a `.gguf` file (default: the fetched SmolLM2
//! GGUF, see `cargo xtask fetch`); SEQLEN defaults to 2048 and WINDOWS (the first N
//! windows) to 40. The text comes from the shared data directory (`MAGR_DATA_DIR`).

use std::path::PathBuf;

use llama_io::data;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = match args.next() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => data::default_model_path()?,
    };
    let seqlen: usize = args.next().map_or(Ok(2048), |s| s.parse())?;
    let windows: usize = args.next().map_or(Ok(40), |s| s.parse())?;

    let start = std::time::Instant::now();
    let model = llama_io::Model::load(&model_path)?;
    eprintln!(
        "loaded {} in {:.1} s",
        model_path.display(),
        start.elapsed().as_secs_f64()
    );
    let tokens = model.encode(&data::read_wikitext2_test()?)?;
    eprintln!("{} tokens", tokens.len());
    let report = llama_io::perplexity(
        &model,
        &tokens,
        seqlen,
        Some(windows),
        faer::Par::rayon(0),
        &mut |done, total| eprintln!("window {done}/{total}"),
    )?;
    println!(
        "ppl {:.4}  windows {}  tokens scored {}  seconds {:.1}  tokens/s {:.1}",
        report.ppl, report.windows, report.tokens_scored, report.seconds, report.tokens_per_second
    );
    Ok(())
}
