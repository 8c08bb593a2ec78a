//! OPTQ on the SmolLM2 layer shapes, RTN throughput (the reference grid, and Q8_0 blocks
//! with the min-max and the diag(H)-weighted fit: the search's cost is their ratio) and
//! one coordinate-descent sweep.
//! Ratios to the floor are printed by `cargo run -p quantizers --release --example optq_speed`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use faer::Par;
use quantizers::{
    GgmlBlockType, GridFit, GridSpec, LayerProblem, Optq, Quantizer, Rtn, SweepOrder, refine,
};

#[path = "layer.rs"]
mod layer;

fn bench(c: &mut Criterion) {
    let par = Par::rayon(0);
    let spec = GridSpec::reference(3, None).unwrap();
    let mut group = c.benchmark_group("quantizers");
    group.sample_size(10);
    for (inputs, outputs) in [(576, 1536), (1536, 576)] {
        let (w, h) = layer::layer(inputs, outputs);
        let p = LayerProblem {
            weights: w.as_ref(),
            original: None,
            hessian: h.as_ref(),
        };
        let id = format!("{inputs}x{outputs}");
        group.bench_function(BenchmarkId::new("optq", &id), |b| {
            b.iter(|| {
                Optq {
                    par,
                    ..Optq::new(spec)
                }
                .quantize(black_box(&p))
                .unwrap()
            })
        });
        group.throughput(Throughput::Elements((inputs * outputs) as u64));
        group.bench_function(BenchmarkId::new("rtn", &id), |b| {
            b.iter(|| Rtn { spec, par }.quantize(black_box(&p)).unwrap())
        });
        for (name, fit) in [
            ("rtn_q8_0_min_max", GridFit::MinMax),
            ("rtn_q8_0_weighted", GridFit::Weighted),
        ] {
            let spec = GridSpec::ggml(GgmlBlockType::Q8_0, fit);
            group.bench_function(BenchmarkId::new(name, &id), |b| {
                b.iter(|| Rtn { spec, par }.quantize(black_box(&p)).unwrap())
            });
        }
        let start = Optq {
            par,
            ..Optq::new(spec)
        }
        .quantize(&p)
        .unwrap();
        group.bench_function(BenchmarkId::new("cd_sweep", &id), |b| {
            b.iter(|| {
                let mut q = start.clone();
                refine(&mut q, &p, None, SweepOrder::Natural, 1, par).unwrap();
                q
            })
        });
        group.throughput(Throughput::Elements(1));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
