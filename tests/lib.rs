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

/// Every message of a server stream (each within 120 s), or the status the call or the
/// stream ended with.
pub async fn messages<T>(call: Result<tonic::Streaming<T>, ClientError>) -> Result<Vec<T>, Status> {
    let mut stream = call.map_err(status)?;
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(std::time::Duration::from_secs(120), stream.message())
        .await
        .expect("messages keep coming")?
    {
        out.push(m);
    }
    Ok(out)
}

pub fn code(e: ClientError) -> Code {
    status(e).code()
}

/// A small RGB picture with structure (stripes and a gradient; `phase` shifts the
/// stripes), as PNG.
pub fn picture(w: u32, h: u32, phase: f32) -> Vec<u8> {
    let mut px = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let s = ((x as f32 * 0.4 + phase).sin() * (y as f32 * 0.25).cos()) * 0.4 + 0.5;
            px.extend([s, y as f32 / h as f32, 1.0 - s]);
        }
    }
    oneiro_trainer::imageio::encode_png(&px, w, h, 3).expect("encodable")
}
