//! The Oneiro daemon: a tonic gRPC server in front of one worker thread per device.
//!
//! Heavy tensor work never runs on tokio's threads: RPC handlers validate the request,
//! then hand a job (with a bounded reply channel) to the device's worker over a bounded
//! queue, and stream what the worker sends back.

pub mod allocator;
pub mod config;
pub mod convert;
pub mod device;
pub mod dream_ops;
pub mod error;
pub mod gan_ops;
pub mod jobs;
pub mod metrics;
pub mod residency;
pub mod server;
pub mod service;
pub mod style_ops;
pub mod vae_ops;
pub mod worker;

pub use config::DaemonConfig;
pub use error::ServiceError;
pub use server::{RunningDaemon, serve, spawn};
