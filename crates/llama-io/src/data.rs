//! Where the texts and the default model live. Neither is in the repository: the texts
//! are read from the shared data directory, the model from the cache that
//! `cargo xtask fetch` fills. A missing file is an error naming it and how to get it.
//!
//! - data files: in `MAGR_DATA_DIR` when it is set, else in the first of
//!   `../shared/data` (from the current directory), `<workspace>/../shared/data` and
//!   `<cache>/data` (where `cargo xtask fetch` puts the calibration texts) holding them;
//! - cache directory: `MAGR_CACHE_DIR`, else `$XDG_CACHE_HOME/magr`, else
//!   `~/.cache/magr`;
//! - default model: `MAGR_MODEL`, else [`DEFAULT_MODEL_FILE`] in the cache directory.

use std::path::{Path, PathBuf};

use crate::error::{LlamaIoError, Result};

/// WikiText-2 raw test split, relative to the data directory.
pub const WIKITEXT2_TEST: &str = "wikitext-2-raw/wiki.test.raw";
/// The default calibration text (Wikipedia articles), relative to the data directory.
pub const ENWIKI_CALIBRATION: &str = "calibration/enwiki-excerpt.txt";
/// A second domain (news articles, one per line), relative to the data directory.
pub const LEE_BACKGROUND: &str = "calibration/lee_background.cor";
/// File name of the default model in the cache: SmolLM2-135M-Instruct, Q4_1 GGUF.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The directories searched for a data file, in order (rules in the module docs).
pub fn data_dirs() -> Vec<PathBuf> {
    if let Some(dir) = env_path("MAGR_DATA_DIR") {
        return vec![dir];
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut dirs = vec![
        PathBuf::from("../shared/data"),
        workspace.join("../shared/data"),
    ];
    dirs.extend(cache_dir().ok().map(|c| c.join("data")));
    dirs
}

/// `relative` in the first data directory that holds it.
///
/// # Errors
/// [`LlamaIoError::Data`] naming the file, the directories searched and how to get it.
pub fn data_file(relative: &str) -> Result<PathBuf> {
    let dirs = data_dirs();
    dirs.iter()
        .map(|d| d.join(relative))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            LlamaIoError::Data(format!(
                "{relative}: not found in {}; set MAGR_DATA_DIR to the directory holding it \
                 (`cargo xtask fetch` gets the calibration texts, not WikiText-2)",
                searched.join(", ")
            ))
        })
}

/// Reads a text file.
///
/// # Errors
/// [`LlamaIoError::Io`] naming the file.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| LlamaIoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Joins the lines of a file with a blank line, the papers' evaluation protocol for
/// WikiText-2 (the dataset's rows joined with `"\n\n"`).
pub fn join_lines(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("\n\n")
}

/// The WikiText-2 test text as the papers evaluate it ([`join_lines`] of the file).
///
/// # Errors
/// The file is missing or unreadable.
pub fn read_wikitext2_test() -> Result<String> {
    Ok(join_lines(&read_text(&data_file(WIKITEXT2_TEST)?)?))
}

/// The cache directory (rules in the module docs); not created here.
///
/// # Errors
/// [`LlamaIoError::Data`] when none of the variables is set.
pub fn cache_dir() -> Result<PathBuf> {
    env_path("MAGR_CACHE_DIR")
        .or_else(|| env_path("XDG_CACHE_HOME").map(|d| d.join("magr")))
        .or_else(|| env_path("HOME").map(|d| d.join(".cache/magr")))
        .ok_or_else(|| LlamaIoError::Data("no cache directory: set MAGR_CACHE_DIR".into()))
}

/// The default model: `MAGR_MODEL`, else the fetched SmolLM2 GGUF in the cache.
///
/// # Errors
/// [`LlamaIoError::Data`] naming the path and saying how to get the file.
pub fn default_model_path() -> Result<PathBuf> {
    if let Some(path) = env_path("MAGR_MODEL") {
        return if path.exists() {
            Ok(path)
        } else {
            Err(LlamaIoError::Data(format!(
                "MAGR_MODEL = {}: no such file or directory",
                path.display()
            )))
        };
    }
    let path = cache_dir()?.join(DEFAULT_MODEL_FILE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LlamaIoError::Data(format!(
            "{}: the default model is not there; run `cargo xtask fetch` (or set MAGR_MODEL \
             to a Hugging Face directory or a .gguf file)",
            path.display()
        )))
    }
}
