//! One error type for the library. Every message names the file, tensor or op at fault.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op}: tensors live on different devices ({a} vs {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },
    #[error("{0}")]
    Device(String),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted: progress saved in {0}; continue with `dcl train --resume {0}`")]
    Interrupted(PathBuf),
    #[error("non-finite loss ({value}) at epoch {epoch}, step {step}")]
    NonFiniteLoss {
        value: f32,
        epoch: usize,
        step: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
