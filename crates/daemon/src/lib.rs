//! The Oneiro daemon: a tonic gRPC server in front of one worker thread per device.
//!
//! Heavy tensor work never runs on tokio's threads: RPC handlers (`rpc`) validate the
//! request and let its technique (`techniques`) plan it, then hand a command (with a
//! bounded reply channel) to the device's worker (`worker`) over a bounded queue, and
//! stream what the worker sends back. Trainings are jobs (`jobs`) that outlive their
//! call. ARCHITECTURE.md draws the whole route.

pub mod allocator;
pub mod config;
pub mod convert;
pub mod device;
pub mod error;
pub mod jobs;
pub mod lock;
pub mod metrics;
pub mod residency;
pub mod rpc;
pub mod server;
pub mod sources;
pub mod techniques;
pub mod validate;
pub mod worker;

pub use config::DaemonConfig;
pub use error::ServiceError;
pub use server::{RunningDaemon, serve, spawn};
