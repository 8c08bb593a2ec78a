//! OPTQ's time as a ratio to its floor (Cholesky factorisation of H plus one `W^T H`
//! product), RTN throughput, and one coordinate-descent sweep, on the SmolLM2 layer
//! shapes and 4096 x 4096. Run: `cargo run -p quantizers --release --example optq_speed [--skip-4096]`.

use std::time::Instant;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::{Accum, Mat, Par, linalg::matmul::matmul};
use quantizers::{GridSpec, LayerProblem, Optq, Quantizer, Rtn, SweepOrder, refine};

#[path = "../benches/layer.rs"]
mod layer;

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let par = Par::rayon(0);
    let skip_big = std::env::args().any(|a| a == "--skip-4096");
    let spec = GridSpec::reference(3, None).unwrap();
    println!("threads: {}", rayon_threads());
    println!(
        "| shape (in x out) | OPTQ | Cholesky + W^T H | ratio | RTN weights/s | one CD sweep |"
    );
    println!("|---|---|---|---|---|---|");
    for (inputs, outputs) in [(576, 1536), (1536, 576), (4096, 4096)] {
        if skip_big && inputs == 4096 {
            continue;
        }
        let (w, h) = layer::layer(inputs, outputs);
        let p = LayerProblem::new(w.as_ref(), h.as_ref());
        // The floor factorises what OPTQ factorises: H in f64 with 1% damping.
        let floor = seconds(|| {
            let damp = 0.01 * (0..inputs).map(|i| h[(i, i)] as f64).sum::<f64>() / inputs as f64;
            let mut h64 = Mat::<f64>::from_fn(inputs, inputs, |i, k| {
                h[(i, k)] as f64 + if i == k { damp } else { 0.0 }
            });
            let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(
                inputs,
                par,
                Default::default(),
            ));
            cholesky_in_place(
                h64.as_mut(),
                Default::default(),
                par,
                MemStack::new(&mut mem),
                Default::default(),
            )
            .unwrap();
            let mut out = Mat::<f32>::zeros(outputs, inputs);
            matmul(
                out.as_mut(),
                Accum::Replace,
                w.transpose(),
                h.as_ref(),
                1.0,
                par,
            );
        });
        let mut optq_result = None;
        let optq = seconds(|| {
            optq_result = Some(
                Optq {
                    par,
                    ..Optq::new(spec)
                }
                .quantize(&p)
                .unwrap(),
            )
        });
        let rtn = seconds(|| {
            Rtn { spec, par }.quantize(&p).unwrap();
        });
        let mut q = optq_result.unwrap();
        let sweep = seconds(|| refine(&mut q, &p, None, SweepOrder::Natural, 1, par).unwrap());
        println!(
            "| {inputs} x {outputs} | {:.3} s | {:.3} s | {:.2} | {:.2e} | {:.3} s |",
            optq,
            floor,
            optq / floor,
            (inputs * outputs) as f64 / rtn,
            sweep
        );
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
