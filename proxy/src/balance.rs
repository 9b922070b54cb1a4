//! Endpoint selection for a service: power of two choices over peak-EWMA latency.
//!
//! Each request draws two ready endpoints at random and takes the cheaper, where an endpoint's
//! cost is its latency estimate times its requests in flight plus one, divided by its weight
//! (Finagle's and linkerd2-proxy's P2C-PeakEWMA). The estimate is a *peak* EWMA of the time to
//! the response head: a slower answer raises it at once, faster ones bring it down over
//! [`DECAY`]. So a slow or overloaded endpoint gets little traffic within a few requests, and
//! gets it back as it recovers — while a round robin would keep sending it its full share.
//!
//! The configuration (which endpoints, their weights and identities) is part of the immutable
//! state snapshot; the runtime load of each endpoint is not: [`Balancer::inherit`] carries it
//! from the previous snapshot to the next for every endpoint that stays (`state::Store::replace`),
//! so a discovery update does not reset what the balancer has learnt, and requests in flight
//! across an update are still counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

mod hash;
mod health_check;
mod outlier;
mod slow_start;
mod success_rate;
mod zone;

use crate::backend::Algorithm;
use crate::state::Endpoint;
use crate::tls::SpiffeId;
pub(crate) use hash::HashKey;
pub use health_check::Prober;
pub(crate) use health_check::Target;
use health_check::{Checked, Checker, Verdict};
pub(crate) use health_check::{
    DEFAULT_EXPECTED_STATUSES, DEFAULT_HC_INTERVAL, DEFAULT_HC_TIMEOUT, DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_UNHEALTHY_THRESHOLD, HealthCheckConfig, ProbeKind,
};
pub(crate) use outlier::{DEFAULT_BASE_EJECTION, DEFAULT_MAX_EJECTION_PERCENT, OutlierConfig};
use outlier::{EjectionReason, Health, Standing};
use slow_start::Warmup;
use success_rate::Evaluation;
pub(crate) use success_rate::{
    DEFAULT_INTERVAL, DEFAULT_MINIMUM_HOSTS, DEFAULT_REQUEST_VOLUME, DEFAULT_STDEV_FACTOR,
    MAX_STDEV_FACTOR, SuccessRateConfig,
};
use zone::Local;

/// The latency estimate of an endpoint nothing has been learnt about yet (linkerd2-proxy's
/// default): high enough that a new endpoint does not take a burst before its first answer.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast an estimate follows answers faster than it: the weight of the old estimate is
/// e^(−elapsed / DECAY).
const DECAY: Duration = Duration::from_secs(10);

/// Chooses one ready endpoint per request.
#[derive(Debug, Default)]
pub(crate) struct Balancer {
    ready: Vec<Ready>,
    algorithm: Algorithm,
    /// Outlier detection, when the backend policy asks for it.
    outlier: Option<OutlierConfig>,
    /// Its success-rate evaluation (with `success_rate`), started by [`Balancer::start`].
    evaluation: OnceLock<Arc<Evaluation>>,
    /// Slow start's window, when the backend policy asks for it (`slow_start`).
    slow_start: Option<Duration>,
    /// Active health checking, when the backend policy asks for it (`health_check`).
    health_check: Option<HealthCheckConfig>,
    /// Its checker, started by [`Balancer::start`].
    checker: OnceLock<Arc<Checker>>,
    /// The zone of every endpoint, ready or not (empty: unknown).
    zones: Vec<String>,
    /// The endpoints of this proxy's zone, preferred while enough are in balancing (set by
    /// [`Balancer::start`]; `None`: no preference).
    local: OnceLock<Option<Local>>,
    /// Round robin: the running sums of the ready endpoints' weights, and the turn.
    cumulative: Vec<u64>,
    turn: AtomicU64,
    /// Ring hash: the ring of the ready endpoints (`balance::hash`).
    ring: Option<hash::Ring>,
}

/// A ready endpoint as configured, and its load (created on first use, or inherited).
#[derive(Debug)]
struct Ready {
    addr: SocketAddr,
    /// The identity its proxy must prove (`None`: not in the mesh).
    identity: Option<SpiffeId>,
    weight: f64,
    /// Its zone (empty: unknown).
    zone: String,
    load: OnceLock<Arc<Load>>,
}

impl Ready {
    fn load(&self) -> &Arc<Load> {
        self.load.get_or_init(|| Arc::new(Load::new()))
    }
}

/// What the balancer knows of one endpoint at run time; outlives state snapshots.
#[derive(Debug)]
pub(crate) struct Load {
    in_flight: AtomicU32,
    /// Outlier detection's view of the endpoint.
    health: Health,
    /// Active health checks' view of the endpoint.
    checked: Checked,
    /// Slow start: since when it warms up.
    warmup: Warmup,
    /// The peak-EWMA latency estimate, in nanoseconds (an `f64`'s bits).
    rtt_ns: AtomicU64,
    /// When the estimate was last updated (nanoseconds since `epoch`).
    updated_ns: AtomicU64,
    epoch: Instant,
}

impl Load {
    fn new() -> Self {
        Self::with_estimate(DEFAULT_RTT.as_nanos() as f64)
    }

    /// A load whose latency estimate starts at `rtt_ns`.
    fn with_estimate(rtt_ns: f64) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            health: Health::default(),
            checked: Checked::default(),
            warmup: Warmup::default(),
            rtt_ns: AtomicU64::new(rtt_ns.to_bits()),
            updated_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since `epoch`.
    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// The estimate as of now: it decays towards zero while no answer updates it, so an endpoint
    /// left alone (a new one, or one that was slow a while ago) is tried again (as
    /// linkerd2-proxy's and tower's peak EWMA do).
    fn estimate(&self, now_ns: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let idle = now_ns.saturating_sub(self.updated_ns.load(Ordering::Relaxed)) as f64;
        rtt * (-idle / DECAY.as_nanos() as f64).exp()
    }

    /// Requests in flight plus this one, per unit of weight (least request's cost).
    fn requests(&self, weight: f64) -> f64 {
        f64::from(self.in_flight.load(Ordering::Relaxed) + 1) / weight
    }

    /// The cost of one more request, as of `now` (one clock read serves both candidates).
    fn cost(&self, weight: f64, now: Instant) -> f64 {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let in_flight = f64::from(self.in_flight.load(Ordering::Relaxed) + 1);
        self.estimate(now_ns) * in_flight / weight
    }

    /// Folds one observed latency into the estimate: a slower one replaces it (peak), a faster
    /// one pulls it down by how long ago the estimate was last updated. Concurrent updates may
    /// lose one another's sample; the estimate is a heuristic and stays within the samples.
    fn observe(&self, rtt: Duration, now: Instant) {
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let rtt = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.updated_ns.load(Ordering::Relaxed)) as f64;
        let w = (-elapsed / DECAY.as_nanos() as f64).exp();
        let next = if rtt > prev * w {
            rtt
        } else {
            prev * w + rtt * (1.0 - w)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated_ns.store(now, Ordering::Relaxed);
    }

    /// The current latency estimate (for `/config` and tests).
    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_nanos(self.estimate(self.now_ns()) as u64)
    }
}

/// One request's endpoint: counted in flight until dropped; [`Picked::observe`] reports how
/// long the response head took.
#[derive(Debug)]
pub(crate) struct Picked {
    /// Where to send the request.
    pub(crate) addr: SocketAddr,
    /// The identity the endpoint's proxy must prove.
    pub(crate) identity: Option<SpiffeId>,
    load: Arc<Load>,
    /// This request is the probe of an endpoint whose ejection time passed.
    probe: bool,
}

impl Picked {
    /// Reports the time from sending the request to its response head (or to its failure),
    /// observed at `now`.
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        self.load.observe(rtt, now);
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over the ready endpoints of `endpoints`, picking with `algorithm`, ejecting
    /// outliers when `outlier` is set.
    pub(crate) fn new(
        endpoints: &[Endpoint],
        algorithm: Algorithm,
        outlier: Option<OutlierConfig>,
    ) -> Self {
        let ready: Vec<Ready> = endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| Ready {
                addr: e.addr,
                identity: e.identity.clone(),
                weight: f64::from(e.weight.max(1)),
                zone: e.zone.clone(),
                load: OnceLock::new(),
            })
            .collect();
        let cumulative = match algorithm {
            Algorithm::RoundRobin => ready
                .iter()
                .scan(0u64, |sum, r| {
                    *sum += r.weight as u64;
                    Some(*sum)
                })
                .collect(),
            _ => Vec::new(),
        };
        let ring = (algorithm == Algorithm::RingHash).then(|| {
            let weighted: Vec<_> = ready.iter().map(|r| (r.addr, r.weight as u32)).collect();
            hash::Ring::new(&weighted)
        });
        Self {
            ready,
            algorithm,
            outlier,
            evaluation: OnceLock::new(),
            slow_start: None,
            health_check: None,
            checker: OnceLock::new(),
            zones: endpoints.iter().map(|e| e.zone.clone()).collect(),
            local: OnceLock::new(),
            cumulative,
            turn: AtomicU64::new(0),
            ring,
        }
    }

    /// With slow start: endpoints new in an update, or readmitted after an ejection, get a share
    /// of their traffic growing over `window` (`slow_start`).
    pub(crate) fn with_slow_start(mut self, window: Option<Duration>) -> Self {
        self.slow_start = window;
        self
    }

    /// With active health checks (`health_check`): endpoints failing them leave the pick set.
    pub(crate) fn with_health_check(mut self, config: Option<HealthCheckConfig>) -> Self {
        self.health_check = config;
        self
    }

    /// Whether anything may take endpoints out of the pick set (outlier detection, health checks).
    fn filters(&self) -> bool {
        self.outlier.is_some() || self.health_check.is_some()
    }

    /// Takes over the load of every endpoint `previous` also had (same address), so what was
    /// learnt, and what is in flight, survives a new snapshot; an endpoint that is new starts
    /// from the mean estimate of the ones that stay (rather than [`DEFAULT_RTT`], which next to
    /// peers answering in a millisecond would keep it idle until the estimate decays). Called
    /// before the snapshot serves any request.
    pub(crate) fn inherit(&self, previous: &Balancer) {
        let (mut sum, mut n) = (0.0, 0u32);
        for r in &self.ready {
            if let Some(old) = previous.ready.iter().find(|o| o.addr == r.addr)
                && let Some(load) = old.load.get()
            {
                sum += load.estimate(load.now_ns());
                n += 1;
                let _ = r.load.set(load.clone());
            }
        }
        if n > 0 {
            let mean = sum / f64::from(n);
            for r in self.ready.iter().filter(|r| r.load.get().is_none()) {
                let load = Load::with_estimate(mean);
                // New next to endpoints that stay: it warms up while they carry the traffic.
                if self.slow_start.is_some() {
                    load.warmup.begin(load.now_ns());
                }
                let _ = r.load.set(Arc::new(load));
            }
        }
        // The same success-rate settings: the evaluation (its task and timing) carries on.
        if let Some(old) = previous.evaluation.get()
            && self.outlier.as_ref() == Some(old.config())
        {
            let _ = self.evaluation.set(old.clone());
        }
        // The same health check settings: the checker (its task and timing) carries on.
        if let Some(old) = previous.checker.get()
            && self.health_check.as_ref() == Some(old.config())
        {
            let _ = self.checker.set(old.clone());
        }
    }

    /// Starts what runs beside the requests once the snapshot is about to serve (after
    /// [`Self::inherit`]): the preference for endpoints in this proxy's `zone`, and the
    /// success-rate evaluation, handed this snapshot's endpoints.
    /// `service`: the backend's qualified name (metrics).
    pub(crate) fn start(
        &self,
        zone: Option<&Arc<str>>,
        service: &str,
        probes: Option<(Target, Option<&Arc<Prober>>)>,
    ) {
        let _ = self
            .local
            .set(zone.and_then(|z| Local::new(self, z, service)));
        if let (Some(config), Some((target, prober))) = (&self.health_check, probes) {
            let checker = self
                .checker
                .get_or_init(|| Checker::spawn(config.clone(), target.clone(), prober));
            let members = self
                .ready
                .iter()
                .map(|r| (r.addr, r.identity.clone(), r.load().clone()));
            checker.set_members(members.collect(), target);
        }
        let Some(config) = self.outlier.as_ref().filter(|o| o.success_rate.is_some()) else {
            return;
        };
        let evaluation = self
            .evaluation
            .get_or_init(|| Evaluation::spawn(config.clone()));
        evaluation.set_members(
            self.ready
                .iter()
                .map(|r| (r.addr, r.load().clone()))
                .collect(),
        );
    }

    /// The endpoint for the next request, or `None` when no endpoint is ready.
    #[cfg(test)]
    pub(crate) fn pick(&self) -> Option<Picked> {
        self.pick_avoiding(None)
    }

    /// [`Self::pick`], but never `avoid` while another endpoint is ready (a retry goes to
    /// another endpoint where there is one).
    pub(crate) fn pick_avoiding(&self, avoid: Option<SocketAddr>) -> Option<Picked> {
        if let Some(Some(local)) = self.local.get() {
            if !local.preferred() {
                local.failovers.increment(1);
            } else if !(local.balancer.ready.len() == 1
                && avoid == Some(local.balancer.ready[0].addr))
            {
                return local.balancer.pick_avoiding(avoid);
            }
        }
        let skip = avoid.and_then(|a| self.ready.iter().position(|r| r.addr == a));
        let i = match (self.ready.len(), skip) {
            (0, _) => return None,
            (1, _) => 0,
            // Two candidates among the others: draw from n − 1 slots and step over the skipped.
            (n, Some(s)) if n > 2 => {
                let past = |i: usize| if i >= s { i + 1 } else { i };
                let a = fastrand::usize(..n - 1);
                let b = (a + 1 + fastrand::usize(..n - 2)) % (n - 1);
                let (a, b) = (past(a), past(b));
                self.cheaper(a, b)
            }
            (2, Some(s)) => 1 - s,
            (n, skip) if self.algorithm == Algorithm::RoundRobin => {
                let i = self.next_turn_warm();
                if Some(i) == skip { (i + 1) % n } else { i }
            }
            (n, _) => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                self.cheaper(a, b)
            }
        };
        let (i, probe) = match self.filters() {
            false => (i, false),
            true => self.in_balancing(i, skip),
        };
        Some(self.picked(i, probe))
    }

    /// Ready endpoint `i` as this request's pick, counted in flight.
    fn picked(&self, i: usize, probe: bool) -> Picked {
        let r = &self.ready[i];
        let load = r.load().clone();
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Picked {
            addr: r.addr,
            identity: r.identity.clone(),
            load,
            probe,
        }
    }

    /// Outlier detection's say on endpoint `j`: in balancing, or due a probe (which this request
    /// takes), or `None`: out.
    fn usable(&self, j: usize) -> Option<(usize, bool)> {
        let load = self.ready[j].load();
        if load.checked.is_unhealthy() {
            return None;
        }
        match load.health.standing(load.now_ns()) {
            Standing::Healthy => Some((j, false)),
            Standing::Probe if load.health.start_probe() => Some((j, true)),
            Standing::Probe | Standing::Out => None,
        }
    }

    /// Outlier detection's and health checks' say on a pick: `i` if it is in balancing (or due a probe, which this
    /// request becomes), else another endpoint that is, from a random start; `i` all the same when
    /// none is (the cap keeps at least one endpoint, but probes can be out on every one).
    fn in_balancing(&self, i: usize, skip: Option<usize>) -> (usize, bool) {
        if let Some(found) = self.usable(i) {
            return found;
        }
        let n = self.ready.len();
        let start = fastrand::usize(..n);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&j| j != i && Some(j) != skip)
            .find_map(|j| self.usable(j))
            .unwrap_or((i, false))
    }

    /// Reports how an exchange with `picked` went to outlier detection: `failed` for a 5xx or an
    /// upstream-side error. May eject the endpoint, or readmit it after its probe.
    pub(crate) fn report(&self, picked: &Picked, failed: bool) {
        let Some(config) = &self.outlier else {
            return;
        };
        let load = &picked.load;
        // Counting the ejected endpoints walks them all: only for a failure that would eject,
        // and when an endpoint's standing changed.
        let ejected_now = || {
            self.ready
                .iter()
                .filter(|r| r.load().health.is_ejected())
                .count()
        };
        let may_eject = || ejected_now() < config.max_ejected(self.ready.len());
        let ejected = load
            .health
            .record(failed, picked.probe, load.now_ns(), config, may_eject);
        // A probe that succeeded readmitted its endpoint.
        let readmitted = picked.probe && !ejected;
        if readmitted && self.slow_start.is_some() {
            // Back to a small share, growing.
            load.warmup.begin(load.now_ns());
        }
        if ejected || readmitted {
            config.ejected_now(ejected_now());
        }
        if ejected {
            config.ejected(if picked.probe {
                EjectionReason::ProbeFailed
            } else {
                EjectionReason::ConsecutiveFailures
            });
            tracing::warn!(
                endpoint = %picked.addr,
                ejections = load.health.ejections(),
                "endpoint ejected from load balancing by outlier detection"
            );
        }
    }

    /// Of two ready endpoints, the one a request costs less on now: by latency × load (P2C-EWMA),
    /// or by load alone (least request).
    fn cheaper(&self, a: usize, b: usize) -> usize {
        let (ra, rb) = (&self.ready[a], &self.ready[b]);
        let (wa, wb) = (self.weight(a), self.weight(b));
        let cheaper = match self.algorithm {
            Algorithm::LeastRequest => ra.load().requests(wa) <= rb.load().requests(wb),
            _ => {
                let now = Instant::now();
                ra.load().cost(wa, now) <= rb.load().cost(wb, now)
            }
        };
        if cheaper { a } else { b }
    }

    /// Endpoint `i`'s weight now: with slow start, times its share.
    fn weight(&self, i: usize) -> f64 {
        let r = &self.ready[i];
        match self.slow_start {
            None => r.weight,
            Some(window) => {
                let load = r.load();
                r.weight * load.warmup.share(load.now_ns(), window)
            }
        }
    }

    /// Round robin's next endpoint, each in proportion to its weight — times its share with slow
    /// start: a warming endpoint's turn is taken with probability share, else the next turn is
    /// (at most one round of turns).
    fn next_turn_warm(&self) -> usize {
        let Some(window) = self.slow_start else {
            return self.next_turn();
        };
        let mut i = self.next_turn();
        for _ in 1..self.ready.len() {
            let load = self.ready[i].load();
            let share = load.warmup.share(load.now_ns(), window);
            if share >= 1.0 || fastrand::f64() < share {
                break;
            }
            i = self.next_turn();
        }
        i
    }

    /// Round robin's next endpoint, each in proportion to its weight.
    fn next_turn(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1).max(1);
        let x = self.turn.fetch_add(1, Ordering::Relaxed) % total;
        self.cumulative.partition_point(|&c| c <= x)
    }

    /// A P2C-EWMA balancer (tests).
    #[cfg(test)]
    pub(crate) fn p2c(endpoints: &[Endpoint]) -> Self {
        Self::new(endpoints, Algorithm::P2cEwma, None)
    }

    /// Number of ready endpoints.
    #[cfg(test)]
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Each ready endpoint's address and current latency estimate (`None`: no request yet).
    #[cfg(test)]
    pub(crate) fn estimates(&self) -> Vec<(SocketAddr, Option<Duration>)> {
        self.ready
            .iter()
            .map(|r| (r.addr, r.load.get().map(|l| l.rtt())))
            .collect()
    }
}

/// `/config`: the algorithm, and per ready endpoint its requests in flight and latency estimate
/// (absent until its first request).
impl serde::Serialize for Balancer {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        #[derive(serde::Serialize)]
        struct EndpointLoad<'a> {
            address: SocketAddr,
            in_flight: u32,
            rtt_estimate_ms: Option<f64>,
            /// With outlier detection: ejected now (probing included), and how often so far.
            #[serde(skip_serializing_if = "Option::is_none")]
            ejected: Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ejections: Option<u32>,
            /// With success-rate ejection: the last interval's rate (`null`: too few requests).
            #[serde(skip_serializing_if = "Option::is_none")]
            success_rate: Option<Option<f64>>,
            /// With health checks: healthy, unhealthy (out of balancing) or unknown (not yet
            /// decided: in balancing).
            #[serde(skip_serializing_if = "Option::is_none")]
            health: Option<Verdict>,
            /// Its zone, when known.
            #[serde(skip_serializing_if = "str::is_empty")]
            zone: &'a str,
            /// With slow start: the endpoint's share of its traffic now (1: warm).
            #[serde(skip_serializing_if = "Option::is_none")]
            slow_start_share: Option<f64>,
        }
        let rated = self
            .outlier
            .as_ref()
            .is_some_and(|o| o.success_rate.is_some());
        let endpoints: Vec<EndpointLoad> = self
            .ready
            .iter()
            .map(|r| {
                let load = r.load.get();
                EndpointLoad {
                    address: r.addr,
                    zone: &r.zone,
                    in_flight: load.map_or(0, |l| l.in_flight.load(Ordering::Relaxed)),
                    rtt_estimate_ms: load.map(|l| l.rtt().as_secs_f64() * 1e3),
                    ejected: self
                        .outlier
                        .as_ref()
                        .map(|_| load.is_some_and(|l| l.health.is_ejected())),
                    ejections: self
                        .outlier
                        .as_ref()
                        .map(|_| load.map_or(0, |l| l.health.ejections())),
                    health: self
                        .health_check
                        .as_ref()
                        .map(|_| load.map_or(Verdict::Unknown, |l| l.checked.verdict())),
                    success_rate: rated.then(|| load.and_then(|l| l.health.success_rate())),
                    slow_start_share: self
                        .slow_start
                        .map(|window| load.map_or(1.0, |l| l.warmup.share(l.now_ns(), window))),
                }
            })
            .collect();
        let mut s = ser.serialize_struct("Balancer", 6)?;
        s.serialize_field("algorithm", &self.algorithm)?;
        s.serialize_field("outlier_detection", &self.outlier)?;
        let slow_start = self
            .slow_start
            .map(|d| humantime::format_duration(d).to_string());
        s.serialize_field("slow_start", &slow_start)?;
        s.serialize_field("health_check", &self.health_check)?;
        #[derive(serde::Serialize)]
        struct LocalZone<'a> {
            zone: &'a str,
            endpoints: usize,
            preferred: bool,
        }
        let local = self
            .local
            .get()
            .and_then(Option::as_ref)
            .map(|l| LocalZone {
                zone: &l.zone,
                endpoints: l.total,
                preferred: l.preferred(),
            });
        s.serialize_field("local_zone", &local)?;
        s.serialize_field("endpoints", &endpoints)?;
        s.end()
    }
}

#[cfg(test)]
mod tests;
