//! [`Model::load`]: the one entry point that chooses a reader by what the path is.
//!
//! Above [`crate::hf`] and [`crate::gguf`], which build a [`Model`] from
//! [`crate::model`] below them.

use std::path::Path;

use crate::error::{LlamaIoError, Result};
use crate::model::Model;

impl Model {
    /// Loads a model: a directory is read as a Hugging Face checkpoint
    /// (`config.json`, safetensors, `tokenizer.json` when present), a file ending in
    /// `.gguf` as a GGUF file (tokenizer rebuilt from its vocabulary).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut model = if path.is_dir() {
            crate::hf::read_hf_dir(path)?
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            crate::gguf::read_gguf(path)?
        } else if path.exists() {
            return Err(LlamaIoError::Unsupported {
                path: path.to_path_buf(),
                msg: "expected a Hugging Face model directory or a `.gguf` file".into(),
            });
        } else {
            return Err(LlamaIoError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        };
        model.source = Some(path.to_path_buf());
        Ok(model)
    }
}
