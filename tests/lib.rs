//! Shared helpers of the end-to-end tests in `tests/*.rs`.

use oneiro_client::ClientError;
use oneiro_daemon::device::DeviceSpec;
use oneiro_daemon::{DaemonConfig, RunningDaemon};
use tonic::{Code, Status};

/// A corpus line with obvious structure, repeated by the tests.
pub const SENTENCE: &str = "the quick brown fox jumps over the lazy dog. ";

/// Starts a CPU daemon on 127.0.0.1:0 over `state`, after `tweak` adjusts its config.
pub async fn start(
    state: &std::path::Path,
    tweak: impl FnOnce(&mut DaemonConfig),
) -> RunningDaemon {
    let mut config = DaemonConfig::new(state.to_path_buf());
    config.device = DeviceSpec::Cpu;
    tweak(&mut config);
    oneiro_daemon::spawn(config, ([127, 0, 0, 1], 0).into())
        .await
        .expect("daemon starts")
}

/// The gRPC status of a client error (panics on transport errors).
pub fn status(e: ClientError) -> Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("not a gRPC status: {other}"),
    }
}

pub fn code(e: ClientError) -> Code {
    status(e).code()
}
