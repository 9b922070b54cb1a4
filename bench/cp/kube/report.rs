//! What a Kubernetes-mode run measured: the JSON document (`--json`) and the table.

use serde::Serialize;

use crate::report::{Connect, Machine, TARGET_PUSH_P99_MS};
use crate::stats::Latency;

/// The whole run.
#[derive(Debug, Serialize)]
pub struct KubeReport {
    /// The command line's settings.
    pub settings: serde_json::Value,
    /// Machine: CPUs, load averages at start and end, pinning.
    pub machine: Machine,
    /// Filling the fake API server.
    pub fill: Fill,
    /// The control plane's first complete sync.
    pub sync: Sync,
    /// Connecting the proxies.
    pub connect: Connect,
    /// EndpointSlice changes → every subscriber's ACK.
    pub changes: Changes,
}

/// Filling the fake API server (in the benchmark's process).
#[derive(Debug, Serialize)]
pub struct Fill {
    /// Services, EndpointSlices and Pods created.
    pub objects: usize,
    /// Time taken, s.
    pub seconds: f64,
}

/// The first complete sync: every kind listed, every Service published.
#[derive(Debug, Serialize)]
pub struct Sync {
    /// From spawning the control plane to its `kubernetes source synced` line, ms.
    pub from_spawn_ms: f64,
    /// From its `control plane ready` line to that line, ms.
    pub from_ready_ms: f64,
    /// Services it holds (checked against the fake's).
    pub services: usize,
    /// EndpointSlices it holds.
    pub endpoint_slices: usize,
    /// Meshed pods it holds.
    pub meshed_pods: usize,
    /// Its CPU time from start to sync, s.
    pub cpu_seconds: f64,
    /// `VmRSS` at the sync, KiB.
    pub rss_kib: u64,
    /// `VmHWM` at the sync, KiB.
    pub hwm_kib: u64,
    /// `VmRSS` after `--settle-seconds`, KiB.
    pub settled_rss_kib: u64,
    /// `VmHWM` after `--settle-seconds`, KiB.
    pub settled_hwm_kib: u64,
}

/// EndpointSlice changes of the service every proxy subscribes to.
#[derive(Debug, Serialize)]
pub struct Changes {
    /// Changes made.
    pub count: usize,
    /// Proxies subscribed to the changed service.
    pub subscribers: usize,
    /// From the fake API server's write to the last subscriber's ACK.
    pub latency: Latency,
    /// The same for each change, in order, ms (an outlier's place in the run shows).
    pub each_ms: Vec<f64>,
    /// Control-plane cores during the phase.
    pub cores: f64,
    /// Responses the proxies received during the phase.
    pub responses: u64,
    /// Control-plane `VmRSS` at the end, KiB.
    pub rss_kib: u64,
    /// Control-plane `VmHWM` at the end, KiB.
    pub hwm_kib: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl KubeReport {
    /// The table, Markdown.
    pub fn table(&self) -> String {
        let (s, c, ch) = (&self.sync, &self.connect, &self.changes);
        let mut out = String::new();
        let mut row = |what: &str, value: String, target: String| {
            out.push_str(&format!("| {what} | {value} | {target} |\n"));
        };
        row(
            "fake API server filled",
            format!(
                "{} objects in {:.1} s",
                self.fill.objects, self.fill.seconds
            ),
            String::new(),
        );
        row(
            "first complete sync",
            format!(
                "{:.2} s from spawn ({:.2} s from ready; {} services, {} slices, {} meshed pods; {:.2} s CPU)",
                s.from_spawn_ms / 1e3,
                s.from_ready_ms / 1e3,
                s.services,
                s.endpoint_slices,
                s.meshed_pods,
                s.cpu_seconds
            ),
            String::new(),
        );
        row(
            "control-plane memory after sync",
            format!(
                "VmRSS {:.1} MiB, VmHWM {:.1} MiB ({:.1} / {:.1} MiB at the sync line)",
                mib(s.settled_rss_kib),
                mib(s.settled_hwm_kib),
                mib(s.rss_kib),
                mib(s.hwm_kib)
            ),
            String::new(),
        );
        row(
            "connect + first full answer",
            format!(
                "{} proxies × {} keys in {:.2} s; {:.1} KiB per proxy ({:.1} → {:.1} MiB RSS)",
                c.proxies,
                c.keys_per_proxy,
                c.seconds,
                c.kib_per_proxy,
                mib(c.rss_before_kib),
                mib(c.rss_after_kib)
            ),
            String::new(),
        );
        let all = ch.latency.count == ch.count;
        row(
            "EndpointSlice change → last ACK",
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} ms ({} changes × {} subscribers; {:.2} cores; end RSS {:.1} MiB, peak {:.1} MiB)",
                ch.latency.p50_ms,
                ch.latency.p99_ms,
                ch.latency.max_ms,
                ch.count,
                ch.subscribers,
                ch.cores,
                mib(ch.rss_kib),
                mib(ch.hwm_kib)
            ),
            format!(
                "p99 ≤ {TARGET_PUSH_P99_MS} ms: {}",
                crate::report::verdict(all && ch.latency.p99_ms <= TARGET_PUSH_P99_MS)
            ),
        );
        format!("| measure | result | target |\n|---|---|---|\n{out}")
    }
}
