//! MagR's default solver (FISTA, `MagrOptions::fista`) against the reference's 200 plain
//! iterations on the same problems: every linear layer of the float model with `H` from
//! its calibration inputs, both solvers back to back per layer. Prints, per layer kind
//! and in all, in how many layers FISTA's objective is at or below plain's, the ratio of
//! the objectives, the iterations, and the summed wall time of each (ratio measured in
//! this one run).
//!
//! `cargo run --release --example magr_solvers -- MODEL [WINDOWS] [SEED] [BITS/GROUP]`
//! (defaults: 32 windows of 2048 tokens of the Wikipedia excerpt, seed 0, per channel;
//! a fourth argument `g128` runs MagR per group of 128 with the per-group alpha).

use faer::{Mat, Par};
use llama_io::{LinearInput, LinearKind, Model, XtxAccumulator, data};
use prox_opt::{MagrOptions, MagrReport, magr};

const SEQLEN: usize = 2048;

/// One layer's two solves.
struct Pair {
    kind: LinearKind,
    plain: MagrReport,
    fista: MagrReport,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: magr_solvers MODEL [WINDOWS] [SEED] [gN]";
    let path = args.next().ok_or(usage)?;
    let windows: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let seed: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let reference = match args.next() {
        None => MagrOptions::per_channel(),
        Some(g) => MagrOptions::per_group(g.trim_start_matches('g').parse()?),
    };
    let par = Par::rayon(0);
    let plain = MagrOptions { par, ..reference };
    let fista = plain.fista();
    let model = Model::load(&path)?;
    let calib = data::data_file(data::ENWIKI_CALIBRATION)?;
    let tokens = model.encode(&data::read_text(&calib)?)?;
    let windows = llama_io::sample_calibration(&tokens, windows, SEQLEN, seed)?;
    let mut hidden = model.embed(&windows)?;
    let mut pairs = Vec::new();
    for block in 0..model.num_blocks() {
        let mut acc = XtxAccumulator::new(model.config(), par);
        hidden = model.run_block_capturing(block, &hidden, par, &mut acc)?;
        let hessians: Vec<Mat<f32>> = LinearInput::ALL
            .iter()
            .map(|&input| {
                let n = input.width(model.config());
                let h = acc.take(input);
                Mat::from_fn(n, n, |i, k| h[i * n + k] as f32)
            })
            .collect();
        for kind in LinearKind::ALL {
            let (out, inputs) = model.linear_shape(kind);
            let w = model.linear_weight(block, kind)?;
            let w0 = Mat::from_fn(inputs, out, |i, j| w[j * inputs + i]);
            let h = &hessians[kind.input().index()];
            let (_, p) = magr(w0.as_ref(), h.as_ref(), &plain)?;
            let (_, f) = magr(w0.as_ref(), h.as_ref(), &fista)?;
            eprintln!(
                "block {block} {kind:?}: FISTA / plain objective {:.4} ({} iterations), time {:.2}",
                f.objective_after / p.objective_after,
                f.iterations,
                f.seconds / p.seconds
            );
            pairs.push(Pair {
                kind,
                plain: p,
                fista: f,
            });
        }
    }
    println!(
        "| layers | FISTA at or below plain | FISTA / plain objective (min, median, max) | FISTA iterations (min-max) | plain s | FISTA s | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|");
    let kinds: Vec<Option<LinearKind>> = LinearKind::ALL
        .iter()
        .map(|&k| Some(k))
        .chain([None])
        .collect();
    for kind in kinds {
        let rows: Vec<&Pair> = pairs
            .iter()
            .filter(|p| kind.is_none_or(|k| p.kind == k))
            .collect();
        let mut ratios: Vec<f64> = rows
            .iter()
            .map(|p| p.fista.objective_after / p.plain.objective_after)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let below = ratios.iter().filter(|&&r| r <= 1.0).count();
        let iterations = rows.iter().map(|p| p.fista.iterations);
        let (lo, hi) = (
            iterations.clone().min().unwrap_or(0),
            iterations.max().unwrap_or(0),
        );
        let plain_s: f64 = rows.iter().map(|p| p.plain.seconds).sum();
        let fista_s: f64 = rows.iter().map(|p| p.fista.seconds).sum();
        println!(
            "| {} | {below} of {} | {:.4}, {:.4}, {:.4} | {lo}-{hi} | {plain_s:.1} | {fista_s:.1} | {:.2}x |",
            kind.map_or("all".to_string(), |k| format!("{k:?}")),
            rows.len(),
            ratios[0],
            ratios[ratios.len() / 2],
            ratios[ratios.len() - 1],
            plain_s / fista_s
        );
    }
    Ok(())
}
