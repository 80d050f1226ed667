//! Process-wide telemetry set-up shared by both binaries (and by tests that run several
//! services in one process): the Prometheus recorder and the tracing subscriber.
//!
//! Metric naming convention: `relaydesk_<crate>_<noun>_<unit>`; counters end in
//! `_total`; labels come from small fixed sets (never ids).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the global Prometheus recorder once and returns its handle for `/metrics`.
/// `None` when another recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                })
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// The Prometheus text of every metric, with the process's own (`process_*`: resident
/// memory, CPU, open files) sampled now. `None` when another recorder was installed.
pub fn render() -> Option<String> {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    let handle = prometheus()?;
    PROCESS
        .get_or_init(|| {
            let c = metrics_process::Collector::default();
            c.describe();
            c
        })
        .collect();
    Some(handle.render())
}

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`); JSON when
/// `LOG_FORMAT=json`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
