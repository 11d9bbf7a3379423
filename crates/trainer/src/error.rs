//! The trainer's one error type. The daemon maps each variant to one gRPC code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad name, empty corpus, negative temperature...).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the model is not in a state to serve it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The consumer of the events went away, or asked to stop.
    #[error("stopped: {0}")]
    Cancelled(String),
    /// A stored file that cannot be read back (truncated, wrong keys...).
    #[error("{0}")]
    Corrupt(String),
    /// Training produced a non-finite loss.
    #[error("{0}")]
    Diverged(String),
    /// A remote resource (the hub) cannot be reached, or is not cached in offline mode.
    #[error("{0}")]
    Unavailable(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

/// A sink's stop request ends the run as cancelled, so `sink.send(event)?` stops it.
impl From<crate::events::Stop> for Error {
    fn from(stop: crate::events::Stop) -> Self {
        Self::Cancelled(stop.0)
    }
}
