//! The `magr` binary's refusals: each bad flag or path is a one-line error naming it,
//! given before any model is loaded, and nothing is written.

use std::process::Command;

fn magr(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_magr"))
        .args(args)
        .env("MAGR_MODEL", "/nonexistent/model.gguf")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_named_errors() {
    let (ok, err) = magr(&["quantize", "--bits", "5"]);
    assert!(!ok && err.contains("unsupported bit width 5"), "{err}");
    let (ok, err) = magr(&["quantize", "--group-size", "0"]);
    assert!(!ok && err.contains("group"), "{err}");
    let (ok, err) = magr(&["quantize", "--method", "sgd"]);
    assert!(!ok && err.contains("sgd"), "{err}");
    let (ok, err) = magr(&["quantize", "--beta", "1.5"]);
    assert!(!ok && err.contains("beta"), "{err}");
}

#[test]
fn an_existing_output_needs_force() {
    let dir = std::env::temp_dir().join(format!("magr-cli-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), b"mine").unwrap();
    let (ok, err) = magr(&["quantize", "--out", dir.to_str().unwrap()]);
    assert!(
        !ok && err.contains("--force") && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("keep.txt")).unwrap(), b"mine");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_model_is_named() {
    let (ok, err) = magr(&["eval"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
}
