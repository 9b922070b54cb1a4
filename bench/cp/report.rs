//! What a run measured: the JSON document (`--json`) and the human table.

use serde::Serialize;

use crate::seed::Seeded;
use crate::stats::Latency;

/// The targets of issue 3, checked in the table.
pub const TARGET_PUSH_P99_MS: f64 = 100.0;
/// Endpoint changes per second to sustain…
pub const TARGET_CHURN_RATE: f64 = 1000.0;
/// …with the control plane under this many cores.
pub const TARGET_CHURN_CORES: f64 = 1.0;
/// Control-plane memory per connected proxy.
pub const TARGET_KIB_PER_PROXY: f64 = 64.0;

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line's settings.
    pub settings: serde_json::Value,
    /// Machine: CPUs, load averages at start and end, pinning.
    pub machine: Machine,
    /// Seeding through the Admin API.
    pub seed: Seeded,
    /// Connecting the proxies.
    pub connect: Connect,
    /// Push-to-ACK of policy changes.
    pub push: Push,
    /// Endpoint churn.
    pub churn: Option<Churn>,
    /// Restart and resync.
    pub resync: Option<Resync>,
}

/// Prints a run's `table` and load averages, and writes `report` as JSON to `json` when given.
pub fn emit(
    table: &str,
    machine: &Machine,
    report: &impl Serialize,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    println!("{table}");
    println!(
        "load average: {} at start, {} at the end",
        machine.load_start, machine.load_end
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Where it ran.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs the benchmark could use.
    pub cpus: Vec<usize>,
    /// CPU of the control plane (`None`: not pinned).
    pub control_plane_cpu: Option<usize>,
    /// CPU of the simulated proxies.
    pub proxies_cpu: Option<usize>,
    /// `/proc/loadavg` at start.
    pub load_start: String,
    /// `/proc/loadavg` at the end.
    pub load_end: String,
    /// Control-plane start-up time (process spawn to ready line), ms.
    pub control_plane_startup_ms: f64,
}

/// Connecting N proxies.
#[derive(Debug, Serialize)]
pub struct Connect {
    /// Proxies.
    pub proxies: usize,
    /// Subscribed keys per proxy (3 per service).
    pub keys_per_proxy: usize,
    /// Time until every proxy had its first full answer, s.
    pub seconds: f64,
    /// Control plane RSS before the proxies connected, KiB.
    pub rss_before_kib: u64,
    /// RSS with every proxy connected and subscribed (after settling), KiB.
    pub rss_after_kib: u64,
    /// Peak RSS so far, KiB.
    pub hwm_kib: u64,
    /// (after − before) / N, KiB.
    pub kib_per_proxy: f64,
    /// Control-plane CPU spent on the connections, ms per proxy.
    pub cpu_ms_per_proxy: f64,
    /// Control-plane cores used while the proxies sat idle, connected.
    pub idle_cores: f64,
    /// `shoal_cp_connected_proxies` once connected.
    pub cp_connected_gauge: f64,
}

/// Push-to-ACK.
#[derive(Debug, Serialize)]
pub struct Push {
    /// Policy changes.
    pub changes: usize,
    /// From sending the Admin write to the last proxy's ACK.
    pub latency: Latency,
    /// The Admin write alone (send to reply; includes the store's fsync).
    pub write: Latency,
    /// Control-plane cores during the phase.
    pub cores: f64,
    /// The control plane's own `shoal_cp_push_ack_seconds` (send → ACK per proxy) over the phase: the
    /// histogram bucket bound (ms) under which half of the pushes fall.
    pub cp_push_ack_p50_le_ms: Option<f64>,
    /// The same for 99 %.
    pub cp_push_ack_p99_le_ms: Option<f64>,
}

/// Endpoint churn.
#[derive(Debug, Serialize)]
pub struct Churn {
    /// Requested changes per second.
    pub target_rate: f64,
    /// Requested duration, s.
    pub seconds: f64,
    /// Writes issued.
    pub issued: usize,
    /// Writes that succeeded.
    pub completed: usize,
    /// Writes that failed.
    pub failed: usize,
    /// Completed writes / time from the first send to the last reply.
    pub achieved_rate: f64,
    /// Writes sent late because earlier ones had not returned (the in-flight cap was reached).
    pub late_sends: usize,
    /// The Admin write alone.
    pub write: Latency,
    /// From sending a change to the last subscribed proxy's ACK of it.
    pub lag: Latency,
    /// Changes not ACKed by every subscriber within the drain deadline.
    pub not_acked: usize,
    /// Control-plane cores over the sending window.
    pub cores: f64,
    /// Responses the proxies received during the phase.
    pub responses: u64,
    /// Control-plane RSS at the end, KiB.
    pub rss_kib: u64,
    /// Whether it kept up: ≥ 95 % of the rate achieved and every change ACKed.
    pub kept_up: bool,
}

/// Kill, restart, resync.
#[derive(Debug, Serialize)]
pub struct Resync {
    /// New process spawn to its ready line, ms.
    pub startup_ms: f64,
    /// From SIGKILL to the last proxy in sync again, ms.
    pub from_kill_ms: f64,
    /// From the new process being ready to the last proxy in sync, ms.
    pub from_ready_ms: f64,
    /// Proxies back in sync.
    pub proxies_synced: usize,
    /// Resources sent again (should be 0: nothing changed).
    pub resources_resent: u64,
    /// Answers to resubscribed absent keys (routes of services without one).
    pub absent_answers: u64,
    /// Responses the proxies received during the resync.
    pub responses: u64,
    /// CPU of the new process from start to resync, s.
    pub cpu_seconds: f64,
    /// RSS of the new process once resynced, KiB.
    pub rss_kib: u64,
}

/// The target column's word.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

impl Report {
    /// The table, Markdown.
    pub fn table(&self) -> String {
        let c = &self.connect;
        let p = &self.push;
        let mut out = String::new();
        let mut row = |what: &str, value: String, target: String| {
            out.push_str(&format!("| {what} | {value} | {target} |\n"));
        };
        row(
            "seed (Admin API writes)",
            format!("{} writes in {:.1} s", self.seed.writes, self.seed.seconds),
            String::new(),
        );
        row(
            "connect + first full answer",
            format!(
                "{} proxies × {} keys in {:.2} s",
                c.proxies, c.keys_per_proxy, c.seconds
            ),
            String::new(),
        );
        row(
            "control-plane memory per proxy",
            format!(
                "{:.1} KiB ({} → {} KiB RSS, peak {} KiB)",
                c.kib_per_proxy, c.rss_before_kib, c.rss_after_kib, c.hwm_kib
            ),
            format!(
                "≤ {TARGET_KIB_PER_PROXY} KiB: {}",
                verdict(c.kib_per_proxy <= TARGET_KIB_PER_PROXY)
            ),
        );
        row(
            "control-plane CPU per proxy connect",
            format!(
                "{:.2} ms; idle connected: {:.3} cores",
                c.cpu_ms_per_proxy, c.idle_cores
            ),
            String::new(),
        );
        row(
            "policy push → last ACK",
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} ms ({} changes; write alone p50 {:.1} ms; {:.2} cores)",
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                p.changes,
                p.write.p50_ms,
                p.cores
            ),
            format!(
                "p99 ≤ {TARGET_PUSH_P99_MS} ms: {}",
                verdict(p.latency.count == p.changes && p.latency.p99_ms <= TARGET_PUSH_P99_MS)
            ),
        );
        if let Some(ch) = &self.churn {
            row(
                "endpoint churn",
                format!(
                    "{:.0}/s achieved of {:.0}/s for {:.0} s ({} ok, {} failed, {} late), control plane {:.2} cores",
                    ch.achieved_rate,
                    ch.target_rate,
                    ch.seconds,
                    ch.completed,
                    ch.failed,
                    ch.late_sends,
                    ch.cores
                ),
                format!(
                    "{TARGET_CHURN_RATE:.0}/s under {TARGET_CHURN_CORES} core: {}",
                    verdict(
                        ch.kept_up
                            && ch.target_rate >= TARGET_CHURN_RATE
                            && ch.cores < TARGET_CHURN_CORES
                    )
                ),
            );
            row(
                "churn push lag (change → last ACK)",
                format!(
                    "p50 {:.1} / p99 {:.1} / max {:.1} ms ({} not ACKed; write alone p50 {:.1} / p99 {:.1} ms)",
                    ch.lag.p50_ms,
                    ch.lag.p99_ms,
                    ch.lag.max_ms,
                    ch.not_acked,
                    ch.write.p50_ms,
                    ch.write.p99_ms
                ),
                String::new(),
            );
        }
        if let Some(r) = &self.resync {
            row(
                "resync after SIGKILL + restart",
                format!(
                    "{:.0} ms from kill ({:.0} ms start-up, {:.0} ms from ready); {} proxies; {} resources re-sent",
                    r.from_kill_ms,
                    r.startup_ms,
                    r.from_ready_ms,
                    r.proxies_synced,
                    r.resources_resent
                ),
                String::new(),
            );
        }
        format!("| measure | result | target |\n|---|---|---|\n{out}")
    }
}
