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

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = match &e {
            ServiceError::Status(s) => return s.clone(),
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
        Status::new(code, e.to_string())
    }
}
