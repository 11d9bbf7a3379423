//! The daemon's error type and its one mapping to gRPC status codes.

use oneiro_trainer::Error as TrainerError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Trainer(#[from] TrainerError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the {device} worker's queue is full ({depth} jobs waiting); retry later")]
    QueueFull { device: String, depth: usize },
    #[error("model {0:?} is training; wait for it to finish")]
    Busy(String),
    #[error("the device worker has stopped")]
    WorkerGone,
    /// A bug surfaced as a panic; the daemon keeps serving.
    #[error("internal error: {0}")]
    Internal(String),
    /// A model that does not fit the device's memory budget.
    #[error("{0}")]
    OverBudget(String),
    #[error("too many open streams ({0}); retry later")]
    TooManyStreams(usize),
    /// Shutdown has begun: new work is refused, running work stops.
    #[error("{0}")]
    ShuttingDown(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// An answer that already is a status (relayed from the device worker).
    #[error("{}", .0.message())]
    Status(Status),
}

/// The part of an error's text a client may see: the message chain, cut at the first
/// line of a backtrace (candle attaches one when `RUST_BACKTRACE` is set, with the
/// server's source paths). The whole text goes to the daemon's log.
pub fn without_internals(text: &str) -> String {
    let frame = |line: &str| {
        let t = line.trim_start();
        t.starts_with("stack backtrace:")
            || t.starts_with("Stack backtrace:")
            || (t.starts_with("at ") && t.contains(".rs:"))
            || t.split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let kept: Vec<&str> = text.lines().take_while(|l| !frame(l)).collect();
    kept.join("\n").trim_end().to_string()
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = match &e {
            ServiceError::Status(s) => {
                let message = without_internals(s.message());
                if message.len() == s.message().len() {
                    return s.clone();
                }
                tracing::warn!(code = ?s.code(), error = s.message(), "request failed");
                return Status::new(s.code(), message);
            }
            ServiceError::Trainer(t) => match t {
                TrainerError::InvalidArgument(_) => Code::InvalidArgument,
                TrainerError::NotFound(_) => Code::NotFound,
                TrainerError::AlreadyExists(_) => Code::AlreadyExists,
                TrainerError::FailedPrecondition(_) => Code::FailedPrecondition,
                TrainerError::Cancelled(_) => Code::Cancelled,
                TrainerError::Diverged(_) => Code::Aborted,
                TrainerError::Unavailable(_) => Code::Unavailable,
                TrainerError::Corrupt(_) => Code::DataLoss,
                TrainerError::Tensor(_) | TrainerError::Io(_) => Code::Internal,
            },
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::QueueFull { .. } => Code::ResourceExhausted,
            ServiceError::Busy(_) => Code::FailedPrecondition,
            ServiceError::WorkerGone => Code::Unavailable,
            ServiceError::OverBudget(_) => Code::ResourceExhausted,
            ServiceError::Internal(_) => Code::Internal,
            ServiceError::TooManyStreams(_) => Code::ResourceExhausted,
            ServiceError::ShuttingDown(_) => Code::Unavailable,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
        };
        let full = e.to_string();
        match code {
            Code::Internal | Code::DataLoss => {
                tracing::error!(?code, error = %full, "request failed")
            }
            _ => tracing::info!(?code, error = %full, "request refused"),
        }
        Status::new(code, without_internals(&full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `RUST_BACKTRACE=1` candle wraps its errors with a backtrace; the client gets
    /// the message alone.
    #[test]
    fn clients_get_the_message_chain_without_backtrace_or_source_paths() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg(
                "unknown layer \"mixed99\": mixed0..mixed10".into(),
            )),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let full = ServiceError::Trainer(TrainerError::Tensor(e));
        assert!(
            full.to_string().contains(".rs:"),
            "the test needs a backtrace"
        );
        let status = Status::from(full);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.message(),
            "tensor error: unknown layer \"mixed99\": mixed0..mixed10"
        );
        // A relayed status is cleaned the same way; a clean one passes unchanged.
        let relayed = Status::invalid_argument(
            "layer 3: bad\nstack backtrace:\n   0: f\n             at /src/x.rs:1:2",
        );
        let s = Status::from(ServiceError::Status(relayed));
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "layer 3: bad")
        );
        let s = Status::from(ServiceError::Status(Status::not_found("no model \"m\"")));
        assert_eq!(s.message(), "no model \"m\"");
    }
}
