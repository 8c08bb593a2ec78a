//! Where the energy of each layer input's `H = X^T X` comes from: per block and input,
//! the share of `tr(H) = sum_t ||x_t||^2` from each calibration window's first token
//! (and first four), from the top 0.1% of tokens, and the largest `||x_t||^2` over the
//! median. Float model, calibration windows as `magr quantize` samples them.
//!
//! `cargo run --release --example token_energy -- MODEL [WINDOWS] [SEED]`
//! (defaults: 8 windows of 2048 tokens of the Wikipedia excerpt, seed 0).

use candle_core::Tensor;
use faer::Par;
use llama_io::{LinearInput, Model, data};

const SEQLEN: usize = 2048;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: token_energy MODEL [WINDOWS] [SEED]")?;
    let windows: usize = args.next().map_or(Ok(8), |s| s.parse())?;
    let seed: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let model = Model::load(&path)?;
    let calib = data::data_file(data::ENWIKI_CALIBRATION)?;
    let tokens = model.encode(&data::read_text(&calib)?)?;
    let windows = llama_io::sample_calibration(&tokens, windows, SEQLEN, seed)?;
    let mut hidden = model.embed(&windows)?;
    println!("block | input | first token | first 4 | top 0.1% | max / median");
    for block in 0..model.num_blocks() {
        let mut sink = |input: LinearInput, x: &Tensor| {
            let width = x.dim(1)?;
            let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let energy: Vec<f64> = values
                .chunks_exact(width)
                .map(|r| r.iter().map(|&a| f64::from(a).powi(2)).sum())
                .collect();
            let total: f64 = energy.iter().sum();
            let share = |keep: &dyn Fn(usize) -> bool| {
                energy
                    .iter()
                    .enumerate()
                    .filter(|&(t, _)| keep(t % SEQLEN))
                    .map(|(_, e)| e)
                    .sum::<f64>()
                    / total
            };
            let mut sorted = energy.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let top = sorted[..sorted.len() / 1000].iter().sum::<f64>() / total;
            println!(
                "{block} | {input:?} | {:.3} | {:.3} | {top:.3} | {:.0}",
                share(&|p| p == 0),
                share(&|p| p < 4),
                sorted[0] / sorted[sorted.len() / 2]
            );
            Ok(())
        };
        hidden = model.run_block_capturing(block, &hidden, Par::rayon(0), &mut sink)?;
    }
    Ok(())
}
