//! Each fuzz target on its seed files and on `MAGR_FUZZ_RUNS` inputs mutated from them
//! (default 2,000 per target): none may panic. Long coverage-guided runs are
//! `cargo xtask fuzz TARGET`, from the same seeds (`cargo run -p fuzz-targets --example
//! seeds DIR` writes them).

#[path = "../examples/seeds/corpus.rs"]
mod seeds;

use std::panic::{AssertUnwindSafe, catch_unwind};

#[test]
fn every_target_survives_its_seeds_and_their_mutations() {
    let runs: usize = std::env::var("MAGR_FUZZ_RUNS")
        .map(|v| v.parse().expect("MAGR_FUZZ_RUNS: a whole number"))
        .unwrap_or(2000);
    let all = seeds::all();
    let failures = std::env::temp_dir().join(format!("magr-fuzz-failures-{}", std::process::id()));
    for (name, target) in fuzz_targets::TARGETS {
        let seeds = &all[name];
        assert!(!seeds.is_empty(), "{name}: no seeds");
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let inputs = seeds
            .iter()
            .cloned()
            .chain((0..runs).map(|i| fuzz_targets::mutate(&seeds[i % seeds.len()], &mut rng)));
        for (i, input) in inputs.enumerate() {
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                std::fs::create_dir_all(&failures).unwrap();
                let path = failures.join(format!("{name}-{i}"));
                std::fs::write(&path, &input).unwrap();
                panic!("{name} panicked on input {i}, saved as {}", path.display());
            }
        }
        eprintln!(
            "{name}: {} seeds and {runs} mutated inputs, no panic",
            seeds.len()
        );
    }
}
