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

/// A loopback address nobody listens on now (for a metrics endpoint).
pub fn free_addr() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("bound")
}

/// The whole HTTP response of `GET /metrics` at `addr`.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the metrics endpoint answers");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request sent");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response read");
    body
}

/// The services a reflection service lists, asked through reflection version `$v`
/// (`v1` or `v1alpha`) on `$channel`.
#[macro_export]
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut refl = ServerReflectionClient::new($channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            resp.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list")
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}
