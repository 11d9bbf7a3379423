//! The Prometheus endpoint (`--metrics-listen`), on `prometheus-client`: every RPC of the
//! served services, taken from their descriptors (a method added to the proto is counted
//! without touching this file), with calls, errors by code — including errors that end
//! a stream after its first message, read from the trailers — and latency histograms;
//! the device queue's wait histogram; live per-device gauges read at scrape time.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::Code;
use tonic::codegen::{Bytes, http};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: String,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Live figures read at scrape time.
pub struct Gauges {
    pub device: String,
    pub queued: usize,
    pub queue_depth: usize,
    pub resident_bytes: u64,
    pub memory_budget_bytes: u64,
    pub active_jobs: usize,
    pub open_streams: usize,
}

pub struct Metrics {
    registry: Registry,
    /// (service, method) of every RPC served, from the descriptors.
    known: BTreeSet<RpcLabels>,
    calls: Family<RpcLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: HistogramFamily<RpcLabels>,
    queue_wait: HistogramFamily<DeviceLabels>,
    queued: Family<DeviceLabels, Gauge>,
    queue_depth: Family<DeviceLabels, Gauge>,
    resident_bytes: Family<DeviceLabels, Gauge>,
    memory_budget_bytes: Family<DeviceLabels, Gauge>,
    active_jobs: Gauge,
    open_streams: Gauge,
    train_steps: Counter,
    train_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    generated_chars: Counter,
}

/// Seconds, from 1 ms to about 9 hours (a training stream lasts as long as its job).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// The services a daemon serves, as encoded descriptor sets.
fn served_descriptor_sets() -> [&'static [u8]; 4] {
    [
        oneiro_proto::v1::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

/// Every (service, method) the encoded descriptor sets define.
pub fn rpcs_of(sets: &[&[u8]]) -> BTreeSet<RpcLabels> {
    let mut out = BTreeSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    out.insert(RpcLabels {
                        service: format!("{}.{}", file.package(), service.name()),
                        method: method.name().to_string(),
                    });
                }
            }
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("oneiro");
        let calls = Family::<RpcLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let histogram = latency_histogram as fn() -> Histogram;
        let latency: HistogramFamily<RpcLabels> = Family::new_with_constructor(histogram);
        let queue_wait: HistogramFamily<DeviceLabels> = Family::new_with_constructor(histogram);
        let m = Self {
            known: rpcs_of(&served_descriptor_sets()),
            calls,
            errors,
            latency,
            queue_wait,
            queued: Family::default(),
            queue_depth: Family::default(),
            resident_bytes: Family::default(),
            memory_budget_bytes: Family::default(),
            active_jobs: Gauge::default(),
            open_streams: Gauge::default(),
            train_steps: Counter::default(),
            train_rate: Gauge::default(),
            generated_chars: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("rpc_calls", "gRPC calls by method", m.calls.clone());
        registry.register(
            "rpc_errors",
            "Failed gRPC calls by method and status code, mid-stream failures included",
            m.errors.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time from request to the end of the response (the whole stream for streaming calls)",
            m.latency.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time work waited in a device queue before it started",
            m.queue_wait.clone(),
        );
        registry.register(
            "queue_jobs",
            "Work waiting for the device",
            m.queued.clone(),
        );
        registry.register(
            "queue_depth",
            "Capacity of the device queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "resident_bytes",
            "Bytes of models and networks kept loaded on the device",
            m.resident_bytes.clone(),
        );
        registry.register(
            "memory_budget_bytes",
            "Bytes the device may keep loaded",
            m.memory_budget_bytes.clone(),
        );
        registry.register(
            "active_jobs",
            "Training jobs queued or running",
            m.active_jobs.clone(),
        );
        registry.register(
            "open_streams",
            "Server streams open now",
            m.open_streams.clone(),
        );
        registry.register("train_steps", "Training steps done", m.train_steps.clone());
        registry.register(
            "train_sequences_per_second",
            "Throughput of the latest training step (sequences or images per second)",
            m.train_rate.clone(),
        );
        registry.register(
            "generated_chars",
            "Characters generated",
            m.generated_chars.clone(),
        );
        // Every RPC shows, at zero, before its first call.
        for rpc in &m.known {
            let _ = m.calls.get_or_create(rpc);
            let _ = m.latency.get_or_create(rpc);
        }
        Self { registry, ..m }
    }

    /// The RPC a request path names (`/oneiro.v1.Oneiro/Train`), if the daemon serves it:
    /// a scanner's made-up paths do not grow the label sets.
    pub fn rpc(&self, path: &str) -> Option<RpcLabels> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let rpc = RpcLabels {
            service: service.to_string(),
            method: method.to_string(),
        };
        self.known.contains(&rpc).then_some(rpc)
    }

    pub fn called(&self, rpc: &RpcLabels) {
        self.calls.get_or_create(rpc).inc();
    }

    /// A call's end: its status and how long it took.
    pub fn finished(&self, rpc: &RpcLabels, code: Code, elapsed: Duration) {
        self.latency
            .get_or_create(rpc)
            .observe(elapsed.as_secs_f64());
        if code != Code::Ok {
            self.errors
                .get_or_create(&ErrorLabels {
                    service: rpc.service.clone(),
                    method: rpc.method.clone(),
                    code: code_name(code),
                })
                .inc();
        }
    }

    pub fn queue_waited(&self, device: &str, waited: Duration) {
        self.queue_wait
            .get_or_create(&DeviceLabels {
                device: device.to_string(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn train_step(&self, rate: f32) {
        self.train_steps.inc();
        self.train_rate.set(f64::from(rate));
    }

    pub fn generated_char(&self) {
        self.generated_chars.inc();
    }

    /// The OpenMetrics text, with the live gauges read now.
    pub fn render(&self, g: &Gauges) -> String {
        let device = DeviceLabels {
            device: g.device.clone(),
        };
        let set = |f: &Family<DeviceLabels, Gauge>, v: u64| {
            f.get_or_create(&device)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.queued, g.queued as u64);
        set(&self.queue_depth, g.queue_depth as u64);
        set(&self.resident_bytes, g.resident_bytes);
        set(&self.memory_budget_bytes, g.memory_budget_bytes);
        self.active_jobs.set(g.active_jobs as i64);
        self.open_streams.set(g.open_streams as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A status code as a label value (`invalid_argument`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .map(Code::from)
}

/// Counts every call of a served RPC and times it to its status, which comes in the
/// response headers (refused before any message) or in the trailers (after a stream).
#[derive(Clone)]
pub struct RpcMetricsLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let rpc = self.metrics.rpc(req.uri().path());
        if let Some(rpc) = &rpc {
            self.metrics.called(rpc);
        }
        let watch = rpc.map(|rpc| CallWatch {
            metrics: self.metrics.clone(),
            rpc,
            start: Instant::now(),
            done: false,
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(match (watch, grpc_status(response.headers())) {
                (None, _) => response.map(tonic::body::Body::new),
                (Some(mut watch), Some(code)) => {
                    watch.finish(code);
                    response.map(tonic::body::Body::new)
                }
                (Some(watch), None) => response.map(|inner| {
                    tonic::body::Body::new(WatchedBody {
                        inner: Box::pin(inner),
                        watch: Some(watch),
                    })
                }),
            })
        })
    }
}

/// One call on its way to its status.
struct CallWatch {
    metrics: Arc<Metrics>,
    rpc: RpcLabels,
    start: Instant,
    done: bool,
}

impl CallWatch {
    fn finish(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.metrics.finished(&self.rpc, code, self.start.elapsed());
        }
    }
}

impl Drop for CallWatch {
    /// A response dropped before its trailers: the client went away.
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A response body that reports the status in its trailers when they pass.
struct WatchedBody<B> {
    inner: Pin<Box<B>>,
    watch: Option<CallWatch>,
}

impl<B: http_body::Body> http_body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(mut w) = self.watch.take()
                {
                    w.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut w) = self.watch.take() {
                    w.finish(Code::Internal);
                }
            }
            // Ended without trailers: nothing said otherwise.
            Poll::Ready(None) => {
                if let Some(mut w) = self.watch.take() {
                    w.finish(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_rpc_is_known_and_renders_at_zero() {
        let m = Metrics::new();
        let train = m.rpc("/oneiro.v1.Oneiro/Train").expect("Train is served");
        assert!(m.rpc("/oneiro.v1.Oneiro/NoSuchMethod").is_none());
        assert!(m.rpc("/grpc.health.v1.Health/Check").is_some());
        assert!(
            m.rpc("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                .is_some()
        );
        m.called(&train);
        m.finished(&train, Code::ResourceExhausted, Duration::from_millis(3));
        m.train_step(120.5);
        m.queue_waited("cpu", Duration::from_millis(20));
        let text = m.render(&Gauges {
            device: "cpu".into(),
            queued: 1,
            queue_depth: 16,
            resident_bytes: 1024,
            memory_budget_bytes: 2048,
            active_jobs: 2,
            open_streams: 3,
        });
        for line in [
            "oneiro_rpc_calls_total{service=\"oneiro.v1.Oneiro\",method=\"Train\"} 1",
            "oneiro_rpc_calls_total{service=\"oneiro.v1.Oneiro\",method=\"VaeMorph\"} 0",
            "oneiro_rpc_errors_total{service=\"oneiro.v1.Oneiro\",method=\"Train\",code=\"resource_exhausted\"} 1",
            "oneiro_rpc_duration_seconds_count{service=\"oneiro.v1.Oneiro\",method=\"Train\"} 1",
            "oneiro_queue_wait_seconds_count{device=\"cpu\"} 1",
            "oneiro_queue_jobs{device=\"cpu\"} 1",
            "oneiro_memory_budget_bytes{device=\"cpu\"} 2048",
            "oneiro_open_streams 3",
            "oneiro_train_steps_total 1",
            "oneiro_train_sequences_per_second 120.5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
