//! The one error type of `llama-io`: every variant names the file, tensor or
//! setting that is wrong, so a user can act on the message alone.

use std::path::{Path, PathBuf};

/// Errors from reading, running, evaluating or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum LlamaIoError {
    /// An operating-system I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file whose bytes do not follow its format (truncated, corrupt, bad header).
    #[error("{path}: malformed file: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or field.
        msg: String,
    },
    /// A valid file describing a model this crate does not support
    /// (biases, MoE, other architectures, unknown rope scaling, dtypes).
    #[error("{path}: unsupported model: {msg}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, naming the tensor or field.
        msg: String,
    },
    /// A tensor that the model needs is absent.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The file (or index) that should hold it.
        path: PathBuf,
        /// The tensor's name in that file.
        tensor: String,
    },
    /// A tensor whose shape differs from what the config implies.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name in that file.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// Non-finite values (NaN or infinity) in a tensor.
    #[error("tensor `{tensor}` contains non-finite values (NaN or infinity)")]
    NonFinite {
        /// The tensor's Hugging Face name.
        tensor: String,
    },
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A data file (corpus, model) that is absent, with how to get it.
    #[error("{0}")]
    Data(String),
    /// Invalid arguments to an API call (window length, sample count, shapes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle's tensor operations.
    #[error("tensor operation failed: {}", CandleMessage(.0))]
    Candle(#[from] candle_core::Error),
    /// A tensor written beside a model's could not be made (the caller's error).
    #[error("extra tensor `{name}`: {source}")]
    Extra {
        /// The tensor's name.
        name: String,
        /// The caller's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A candle error's message on one line, without the backtrace candle appends to it
/// when `RUST_BACKTRACE` is set (a user reads the message, not candle's stack).
pub(crate) struct CandleMessage<'a>(pub &'a candle_core::Error);

impl std::fmt::Display for CandleMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use candle_core::Error as E;
        match self.0 {
            E::WithBacktrace { inner, .. } => CandleMessage(inner).fmt(f),
            E::Context { inner, context } => write!(f, "{context}: {}", CandleMessage(inner)),
            E::WithPath { inner, path } => {
                write!(f, "{}: {}", path.display(), CandleMessage(inner))
            }
            other => write!(f, "{other}"),
        }
    }
}

impl From<atomic_fs::Error> for LlamaIoError {
    /// [`LlamaIoError::Io`] naming the same path.
    fn from(e: atomic_fs::Error) -> Self {
        LlamaIoError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl LlamaIoError {
    /// [`LlamaIoError::Format`] for the file at `path`.
    pub(crate) fn format(path: &Path, msg: String) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg,
        }
    }

    /// [`LlamaIoError::Unsupported`] for the file at `path`.
    pub(crate) fn unsupported(path: &Path, msg: String) -> Self {
        Self::Unsupported {
            path: path.to_path_buf(),
            msg,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = LlamaIoError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::backtrace::Backtrace;

    #[test]
    fn candle_messages_lose_their_backtrace_and_stay_on_one_line() {
        let traced = |inner: candle_core::Error| candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(Backtrace::force_capture()),
        };
        let e = traced(candle_core::Error::Msg("unexpected end".into()));
        assert!(
            e.to_string().lines().count() > 1,
            "candle appends its trace"
        );
        assert_eq!(CandleMessage(&e).to_string(), "unexpected end");
        let in_context = traced(
            traced(candle_core::Error::Msg("bad block".into()))
                .with_path("/m.gguf")
                .context("reading tensor `t`"),
        );
        assert_eq!(
            CandleMessage(&in_context).to_string(),
            "reading tensor `t`: /m.gguf: bad block"
        );
        assert_eq!(
            LlamaIoError::Candle(e).to_string(),
            "tensor operation failed: unexpected end"
        );
    }
}
