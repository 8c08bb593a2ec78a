//! Prints MagR's per-iteration time as a ratio to one `H W` product (its floor), the
//! FISTA iterations needed to reach the objective of 200 plain iterations, and what FISTA as
//! [`MagrOptions::fista`] sets it (at most 40 iterations, objective test) gives against
//! 200 plain iterations (objective, wall time, per channel and with groups of 128), for
//! the SmolLM2 layer shapes and 4096 x 4096, with `H` from 2048 tokens of
//! low-rank-plus-noise features.
//! Run: `cargo run -p prox-opt --release --example magr_speed [--skip-4096]`.

use std::time::Instant;

use faer::{Accum, Mat, Par, linalg::matmul::matmul};
use prox_opt::{
    Fista, Grouping, LinfNorm, MagrOptions, ProximalGradient, Quadratic, Smooth, StoppingRule, magr,
};

#[path = "../benches/problem.rs"]
mod problem;

/// Median wall time of `reps` runs of `f`, in seconds.
fn median_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    let par = Par::rayon(0);
    let skip_big = std::env::args().any(|a| a == "--skip-4096");
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "| shape (in x out) | H*W floor | plain iteration | ratio | FISTA iterations to match 200 plain |"
    );
    println!("|---|---|---|---|---|");
    let mut defaults = Vec::new();
    for (inputs, outputs) in [(576, 1536), (1536, 576), (4096, 4096)] {
        if skip_big && inputs == 4096 {
            continue;
        }
        let big = inputs == 4096;
        let (h, w0) = problem::magr_problem(inputs, outputs, 2048, par);
        let f = Quadratic::new(h.as_ref(), w0.as_ref(), par).unwrap();
        let g = LinfNorm {
            weight: 1e-3 * f.lipschitz(),
            group_rows: None,
        };

        let mut out = Mat::<f32>::zeros(inputs, outputs);
        let reps = if big { 3 } else { 7 };
        let floor = median_seconds(reps, || {
            matmul(
                out.as_mut(),
                Accum::Replace,
                h.as_ref(),
                w0.as_ref(),
                1.0,
                par,
            )
        });
        // Per-iteration cost: (k + 1 iterations) minus (1 iteration), over k, so the
        // final objective product and set-up cancel out.
        let k = if big { 4 } else { 20 };
        let solve = |n: usize| {
            let mut w = w0.clone();
            ProximalGradient {
                stop: StoppingRule::iterations(n),
                record_trace: false,
                par,
            }
            .solve(&f, &g, &mut w);
        };
        let t_long = median_seconds(reps, || solve(k + 1));
        let t_short = median_seconds(reps, || solve(1));
        let per_iteration = (t_long - t_short) / k as f64;

        let fista_needed = if big {
            "not run (too slow here)".to_string()
        } else {
            let mut w = w0.clone();
            let plain = ProximalGradient {
                stop: StoppingRule::iterations(200),
                record_trace: false,
                par,
            }
            .solve(&f, &g, &mut w);
            let mut w = w0.clone();
            let fista = Fista {
                stop: StoppingRule::iterations(200),
                record_trace: true,
                par,
            }
            .solve(&f, &g, &mut w);
            match fista
                .trace
                .unwrap()
                .iter()
                .position(|&v| v <= plain.objective)
            {
                Some(i) => i.to_string(),
                None => "more than 200".to_string(),
            }
        };
        println!(
            "| {inputs} x {outputs} | {:.2} ms | {:.2} ms | {:.3} | {fista_needed} |",
            floor * 1e3,
            per_iteration * 1e3,
            per_iteration / floor
        );
        if !big {
            defaults.push((h, w0));
        }
    }
    println!();
    println!(
        "| shape (in x out) | grouping | FISTA iterations (objective test) | F / F(200 plain) - 1 | plain 200 s / FISTA s |"
    );
    println!("|---|---|---|---|---|");
    for (h, w0) in &defaults {
        for reference in [MagrOptions::per_channel(), MagrOptions::per_group(128)] {
            let plain = MagrOptions { par, ..reference };
            let fista = plain.fista();
            let (_, p) = magr(w0.as_ref(), h.as_ref(), &plain).unwrap();
            let (_, f) = magr(w0.as_ref(), h.as_ref(), &fista).unwrap();
            let grouping = match reference.grouping {
                Grouping::PerChannel => "per channel".to_string(),
                Grouping::PerGroup(g) => format!("groups of {g}"),
            };
            println!(
                "| {} x {} | {grouping} | {} | {:.2e} | {:.2} |",
                w0.nrows(),
                w0.ncols(),
                f.iterations,
                f.objective_after / p.objective_after - 1.0,
                p.seconds / f.seconds
            );
        }
    }
}
