//! Random kills: `magr quantize` killed with SIGKILL at random moments and resumed each
//! time finishes with exactly the files, and the bytes, of an uninterrupted run.
//!
//! `MAGR_KILLS` kills (default 20) at delays drawn uniformly over an uninterrupted run's
//! duration with the seed `MAGR_KILL_SEED` (default 0); `cargo xtask kills` runs it with
//! more and prints where the kills landed.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Decoder blocks of the generated model: one checkpoint each.
const BLOCKS: usize = 6;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} does not parse"))
        })
        .unwrap_or(default)
}

/// The files of an output, with the bytes of those that hold no timing (the reports
/// record seconds; every model file must match exactly).
fn comparable(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    common::tree(dir)
        .into_iter()
        .map(|(path, bytes)| {
            let timed = path.components().count() == 1;
            (path, (!timed).then_some(bytes))
        })
        .collect()
}

/// Where a killed run was, read from what it left: its staging directory and checkpoint.
fn stage(out: &Path) -> String {
    let partial = out.with_extension("partial");
    let state = partial.join("checkpoint/state.json");
    if out.exists() {
        return "finished (output renamed into place)".into();
    }
    if !partial.exists() {
        return "starting (no staging directory yet)".into();
    }
    let next_block = std::fs::read_to_string(&state)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["next_block"].as_u64());
    match next_block {
        None => "loading, calibration or block 0".into(),
        Some(n) if (n as usize) < BLOCKS => format!("block {n}"),
        Some(_) if std::fs::read_dir(&partial).unwrap().count() > 1 => "writing the outputs".into(),
        Some(_) => "evaluation, before the outputs".into(),
    }
}

#[test]
fn killed_and_resumed_runs_finish_with_the_bytes_of_an_uninterrupted_run() {
    let kills: usize = env_or("MAGR_KILLS", 20);
    let seed: u64 = env_or("MAGR_KILL_SEED", 0);
    let dir = std::env::temp_dir().join(format!("magr-kills-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    common::write_model_dir(&dir.join("model"), BLOCKS, 9);
    std::fs::write(dir.join("calib.txt"), common::word_text(4000, 1)).unwrap();
    std::fs::write(dir.join("eval.txt"), common::word_text(1000, 2)).unwrap();
    let args = |out: &Path| -> Vec<String> {
        let mut args: Vec<String> = [
            "quantize",
            "--quiet",
            "--bits",
            "3",
            "--nsamples",
            "8",
            "--seqlen",
            "64",
            "--magr-iters",
            "100",
            "--formats",
            "fake-quant,gptq",
            "--eval-windows",
            "4",
            "--eval-seqlen",
            "64",
        ]
        .map(String::from)
        .to_vec();
        for (flag, path) in [
            ("--model", dir.join("model")),
            ("--calib", dir.join("calib.txt")),
            ("--eval-text", dir.join("eval.txt")),
            ("--out", out.to_path_buf()),
        ] {
            args.push(flag.into());
            args.push(path.to_str().unwrap().into());
        }
        args
    };
    let magr = env!("CARGO_BIN_EXE_magr");
    let log = dir.join("stderr.txt");
    let run = |out: &Path, resume: bool| {
        let mut command = Command::new(magr);
        command.args(args(out)).stdout(Stdio::null());
        if resume {
            command.arg("--resume");
        }
        command.stderr(std::fs::File::create(&log).unwrap());
        command.spawn().unwrap()
    };

    // The uninterrupted run and its duration.
    let reference = dir.join("reference");
    let start = Instant::now();
    let status = run(&reference, false).wait().unwrap();
    let whole = start.elapsed();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let expected = comparable(&reference);

    let mut rng = StdRng::seed_from_u64(seed);
    let mut stages: BTreeMap<String, usize> = BTreeMap::new();
    let (mut killed, mut trials) = (0, 0);
    let out = dir.join("out");
    while killed < kills {
        trials += 1;
        let _ = std::fs::remove_dir_all(&out);
        // A kill that lands after the output was renamed into place, before the process
        // exits, finds the run finished: its lock file may stay behind (the lock itself
        // dies with the process), and `--resume` would rightly refuse the existing output.
        let mut killed_after_commit = false;
        // Kill, resume, kill ... until a run ends by itself.
        loop {
            let mut child = run(&out, true);
            let delay = whole.mul_f64(rng.random_range(0.0..1.0));
            let start = Instant::now();
            let ended = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if start.elapsed() >= delay || killed >= kills {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            match ended {
                Some(status) => {
                    assert!(
                        status.success(),
                        "{}",
                        std::fs::read_to_string(&log).unwrap()
                    );
                    break;
                }
                None if killed >= kills => {
                    let status = child.wait().unwrap();
                    assert!(
                        status.success(),
                        "{}",
                        std::fs::read_to_string(&log).unwrap()
                    );
                    break;
                }
                None => {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    if out.exists() && !out.with_extension("partial").exists() {
                        killed_after_commit = true;
                        break;
                    }
                    killed += 1;
                    *stages.entry(stage(&out)).or_default() += 1;
                }
            }
        }
        assert_eq!(
            comparable(&out),
            expected,
            "trial {trials}: the resumed output differs from the uninterrupted run's"
        );
        assert!(!out.with_extension("partial").exists());
        if killed_after_commit {
            *stages
                .entry("after the output was in place".into())
                .or_default() += 1;
            let _ = std::fs::remove_file(out.with_extension("lock"));
        } else {
            assert!(!out.with_extension("lock").exists());
        }
    }
    eprintln!(
        "{killed} kills over {trials} runs resumed to the same bytes (seed {seed}, an \
         uninterrupted run takes {:.2} s); where the kills landed:",
        whole.as_secs_f64()
    );
    for (stage, count) in &stages {
        eprintln!("  {count:>4}  {stage}");
    }
    // Delays spread over the whole run land in more than one place.
    assert!(stages.len() > 1, "{stages:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
