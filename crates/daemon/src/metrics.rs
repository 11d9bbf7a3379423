//! Counters for the optional Prometheus endpoint (`--metrics-listen`), rendered in the
//! text exposition format. Hand-rolled: a handful of atomics need no metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const KNOWN_METHODS: &[&str] = &[
    "Info",
    "CreateModel",
    "ListModels",
    "DescribeModel",
    "DeleteModel",
    "Train",
    "WatchJob",
    "CancelJob",
    "ListJobs",
    "ResumeJob",
    "Generate",
    "LoadModel",
    "UnloadModel",
    "Check",
    "Watch",
    "ServerReflectionInfo",
];

#[derive(Default)]
pub struct Metrics {
    /// Calls by method.
    calls: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed calls by gRPC code.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    pub train_steps: AtomicU64,
    pub generated_chars: AtomicU64,
    /// Latest training throughput, as f32 bits.
    pub sequences_per_second: AtomicU64,
}

/// Live figures read at scrape time.
pub struct Gauges {
    pub queued: usize,
    pub queue_depth: usize,
    pub active_jobs: usize,
    pub open_streams: usize,
}

impl Metrics {
    pub fn call(&self, method: &str) {
        let mut calls = self.calls.lock().expect("metrics poisoned");
        match calls.get_mut(method) {
            Some(n) => *n += 1,
            // Method names come from the request path: keep only the API's own, so a
            // scanner cannot grow this map.
            None => {
                if let Some(m) = KNOWN_METHODS.iter().find(|m| **m == method) {
                    calls.insert(m, 1);
                }
            }
        }
    }

    pub fn error(&self, code: tonic::Code) {
        let name = match code {
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::NotFound => "not_found",
            tonic::Code::AlreadyExists => "already_exists",
            tonic::Code::FailedPrecondition => "failed_precondition",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Cancelled => "cancelled",
            tonic::Code::Aborted => "aborted",
            tonic::Code::DataLoss => "data_loss",
            tonic::Code::Unauthenticated => "unauthenticated",
            _ => "internal",
        };
        *self
            .errors
            .lock()
            .expect("metrics poisoned")
            .entry(name)
            .or_default() += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        fn header(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        let mut out = String::new();
        header(
            &mut out,
            "oneiro_calls_total",
            "counter",
            "gRPC calls by method.",
        );
        for (m, n) in self.calls.lock().expect("metrics poisoned").iter() {
            let _ = writeln!(out, "oneiro_calls_total{{method=\"{m}\"}} {n}");
        }
        header(
            &mut out,
            "oneiro_errors_total",
            "counter",
            "Failed calls by gRPC code.",
        );
        for (c, n) in self.errors.lock().expect("metrics poisoned").iter() {
            let _ = writeln!(out, "oneiro_errors_total{{code=\"{c}\"}} {n}");
        }
        let f = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let rate = f32::from_bits(f(&self.sequences_per_second) as u32);
        for (name, kind, help, value) in [
            (
                "oneiro_queue_jobs",
                "gauge",
                "Jobs waiting for the device worker.",
                g.queued.to_string(),
            ),
            (
                "oneiro_queue_depth",
                "gauge",
                "Capacity of the device queue.",
                g.queue_depth.to_string(),
            ),
            (
                "oneiro_active_jobs",
                "gauge",
                "Training jobs queued or running.",
                g.active_jobs.to_string(),
            ),
            (
                "oneiro_open_streams",
                "gauge",
                "Server streams open now.",
                g.open_streams.to_string(),
            ),
            (
                "oneiro_train_steps_total",
                "counter",
                "Training steps done.",
                f(&self.train_steps).to_string(),
            ),
            (
                "oneiro_train_sequences_per_second",
                "gauge",
                "Throughput of the latest training step.",
                rate.to_string(),
            ),
            (
                "oneiro_generated_chars_total",
                "counter",
                "Characters generated.",
                f(&self.generated_chars).to_string(),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.call("Generate");
        m.call("Generate");
        m.error(tonic::Code::ResourceExhausted);
        m.train_steps.fetch_add(7, Ordering::Relaxed);
        let text = m.render(&Gauges {
            queued: 1,
            queue_depth: 16,
            active_jobs: 2,
            open_streams: 3,
        });
        assert!(
            text.contains("oneiro_calls_total{method=\"Generate\"} 2"),
            "{text}"
        );
        assert!(text.contains("oneiro_errors_total{code=\"resource_exhausted\"} 1"));
        assert!(text.contains("# TYPE oneiro_queue_jobs gauge\noneiro_queue_jobs 1"));
        assert!(text.contains("oneiro_train_steps_total 7"));
    }
}
