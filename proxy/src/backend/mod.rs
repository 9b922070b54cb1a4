//! A backend service's policy (`BackendPolicy`): how its endpoints are picked, the bulkhead caps
//! (requests in flight, connections, pending requests, requests per connection, retries in
//! flight), and its circuit breaker — with the runtime state they keep (the counts, the breaker's
//! state and window), which outlives state snapshots ([`BackendRuntime::inherit`]). The stage
//! that enforces the cap on requests and the breaker is `outbound::http::backend`; the connection
//! limits are `endpoint::limits`'; the cap on retries is the retry stage's; the algorithm is
//! `balance`'s.

mod breaker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::Gauge;
use serde::Serialize;
use tokio::time::Instant;

use crate::endpoint::{ConnGate, ConnLimits};

use breaker::{Admission, Breaker};
pub(crate) use breaker::{BreakerConfig, BreakerOverride};

/// How a request picks one of a backend's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Algorithm {
    /// Power of two choices over peak-EWMA latency × (in flight + 1) ÷ weight (the default).
    #[default]
    P2cEwma,
    /// Each endpoint in turn, in proportion to its weight.
    RoundRobin,
    /// Of two endpoints drawn at random, the one with fewer requests in flight (÷ weight).
    LeastRequest,
    /// Consistent hashing of the policy's `hash_key` onto a ring of the endpoints
    /// (`balance::hash`); a request without the key is balanced as by `P2cEwma`.
    RingHash,
}

/// A backend's resolved policy (defaults filled in), as `/config` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BackendPolicy {
    pub(crate) load_balancer: Algorithm,
    /// What `RingHash` hashes (set with it, and only with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hash_key: Option<crate::balance::HashKey>,
    /// The bulkhead: requests in flight to the backend (sent, response head not yet back) beyond
    /// which a request is answered 503 `backend-overloaded` at once.
    pub(crate) max_concurrent_requests: Option<u32>,
    pub(crate) circuit_breaker: Option<BreakerConfig>,
    /// Ejection of failing endpoints (applied by the balancer).
    pub(crate) outlier_detection: Option<crate::balance::OutlierConfig>,
    /// How long connecting to an endpoint (TCP and mTLS) may take, instead of
    /// `SHOAL_CONNECT_TIMEOUT` (TCP alone).
    #[serde(serialize_with = "crate::state::serialize_duration_opt")]
    pub(crate) connect_timeout: Option<Duration>,
    /// Slow start: a new or readmitted endpoint's share grows linearly over this window (applied
    /// by the balancer).
    #[serde(serialize_with = "crate::state::serialize_duration_opt")]
    pub(crate) slow_start: Option<Duration>,
    /// Connections, requests waiting for one, requests per connection.
    #[serde(flatten)]
    pub(crate) connections: ConnLimits,
    /// Retries in flight to the backend beyond which a retry is skipped (the failure returned).
    pub(crate) max_concurrent_retries: Option<u32>,
    /// Active health checks of the endpoints (applied by the balancer).
    pub(crate) health_check: Option<crate::balance::HealthCheckConfig>,
}

impl BackendPolicy {
    /// The policy of a backend without one: the default algorithm, no cap, no breaker.
    pub(crate) fn none() -> Self {
        Self {
            load_balancer: Algorithm::default(),
            hash_key: None,
            max_concurrent_requests: None,
            circuit_breaker: None,
            outlier_detection: None,
            connect_timeout: None,
            slow_start: None,
            connections: ConnLimits::default(),
            max_concurrent_retries: None,
            health_check: None,
        }
    }
}

/// A backend's policy and its runtime state (created on first use, or inherited).
#[derive(Debug)]
pub(crate) struct BackendRuntime {
    pub(crate) policy: BackendPolicy,
    /// The service's qualified name (metrics and errors).
    service: String,
    state: OnceLock<Arc<RuntimeState>>,
    /// Connection accounting, when the policy limits connections.
    gate: OnceLock<Arc<ConnGate>>,
    /// Retries in flight, when the policy caps them.
    retries: OnceLock<Arc<AtomicU32>>,
}

/// What a backend's policy counts at run time; outlives snapshots.
#[derive(Debug)]
struct RuntimeState {
    /// Requests in flight (counted only under a cap).
    in_flight: AtomicU32,
    in_flight_gauge: Gauge,
    breaker: Option<Breaker>,
}

/// Why the backend stage refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The cap on requests in flight is reached.
    Overloaded(u32),
    /// The circuit breaker is open.
    CircuitOpen,
}

/// A request the backend's policy let through: counted in flight until dropped, and — when a
/// breaker counts it — to be reported with [`Admitted::report`].
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Held for its `Drop`: the request leaves the count when the exchange ends.
    _in_flight: Option<InFlight>,
    breaker: Option<(Arc<RuntimeState>, Admission)>,
}

impl Admitted {
    /// Tells the breaker how the request went.
    pub(crate) fn report(mut self, failed: bool, now: Instant) {
        if let Some((state, admission)) = self.breaker.take()
            && let Some(b) = &state.breaker
        {
            b.record(admission, failed, now);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // Not reported: the request was abandoned (the client went away, a timeout above).
        if let Some((state, admission)) = self.breaker.take()
            && let Some(b) = &state.breaker
        {
            b.abandon(admission);
        }
    }
}

impl BackendRuntime {
    /// Runtime state for `service`'s `policy`, created on first use.
    pub(crate) fn new(policy: BackendPolicy, service: &str) -> Self {
        Self {
            policy,
            service: service.to_string(),
            state: OnceLock::new(),
            gate: OnceLock::new(),
            retries: OnceLock::new(),
        }
    }

    /// The connection limits' accounting, when the policy sets any.
    pub(crate) fn gate(&self) -> Option<&Arc<ConnGate>> {
        if !self.policy.connections.any() {
            return None;
        }
        Some(
            self.gate
                .get_or_init(|| ConnGate::new(&self.service, &self.policy.connections)),
        )
    }

    /// A slot for one retry under the policy's `max_concurrent_retries` (held until the retry's
    /// exchange ends); `Err(max)` when that many are in flight. Without a cap, always a slot.
    pub(crate) fn retry_slot(&self) -> Result<RetrySlot, u32> {
        let Some(max) = self.policy.max_concurrent_retries else {
            return Ok(RetrySlot(None));
        };
        let count = self.retries.get_or_init(Arc::default);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| max)?;
        Ok(RetrySlot(Some(count.clone())))
    }

    /// Whether the policy has anything for the backend stage to do.
    pub(crate) fn is_active(&self) -> bool {
        self.policy.max_concurrent_requests.is_some() || self.policy.circuit_breaker.is_some()
    }

    fn state(&self) -> &Arc<RuntimeState> {
        self.state.get_or_init(|| {
            let breaker = self.policy.circuit_breaker.as_ref().map(|c| {
                let b = Breaker::new(c.clone(), &self.service);
                b.show_state(c.force);
                b
            });
            Arc::new(RuntimeState {
                in_flight: AtomicU32::new(0),
                in_flight_gauge: metrics::gauge!(crate::metrics::names::BACKEND_IN_FLIGHT, "service" => self.service.clone()),
                breaker,
            })
        })
    }

    /// Takes over `previous`'s state when the policy counts the same way (same breaker settings
    /// but for the override), so an update that does not touch the policy keeps the breaker's
    /// state and the count in flight. The connection and retry counts always carry over (the
    /// new limits apply to them). Called before the snapshot serves a request.
    pub(crate) fn inherit(&self, previous: &BackendRuntime) {
        if let Some(gate) = previous.gate.get()
            && self.policy.connections.any()
        {
            gate.set_limits(&self.policy.connections);
            let _ = self.gate.set(gate.clone());
        }
        if let Some(retries) = previous.retries.get() {
            let _ = self.retries.set(retries.clone());
        }
        let Some(old) = previous.state.get() else {
            return;
        };
        let same = match (
            &self.policy.circuit_breaker,
            &previous.policy.circuit_breaker,
        ) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_window(b),
            _ => false,
        };
        if same {
            if let (Some(b), Some(c)) = (&old.breaker, &self.policy.circuit_breaker) {
                b.show_state(c.force);
            }
            let _ = self.state.set(old.clone());
        }
    }

    /// Lets a request through the cap and the breaker, or says why not.
    pub(crate) fn admit(&self, now: Instant) -> Result<Admitted, Refusal> {
        let state = self.state();
        let breaker = match (&state.breaker, &self.policy.circuit_breaker) {
            (Some(b), Some(config)) => match b.admit(now, config.force) {
                Admission::Refused => return Err(Refusal::CircuitOpen),
                admission => Some((state.clone(), admission)),
            },
            _ => None,
        };
        let in_flight = match self.policy.max_concurrent_requests {
            None => None,
            Some(max) => {
                let before = state.in_flight.fetch_add(1, Ordering::Relaxed);
                state.in_flight_gauge.increment(1.0);
                let guard = InFlight(state.clone());
                if before >= max {
                    // `guard` gives the slot back; the breaker's admission is abandoned.
                    drop(guard);
                    drop(Admitted {
                        _in_flight: None,
                        breaker,
                    });
                    crate::metrics::backend_overloaded(&self.service, "max_concurrent_requests");
                    return Err(Refusal::Overloaded(max));
                }
                Some(guard)
            }
        };
        Ok(Admitted {
            _in_flight: in_flight,
            breaker,
        })
    }
}

/// `/config`: the policy, the counts against its caps (requests in flight, connections open,
/// requests pending, retries in flight) and the breaker's state.
impl Serialize for BackendRuntime {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let state = self.state.get();
        let mut s = ser.serialize_struct("BackendRuntime", 6)?;
        s.serialize_field("policy", &self.policy)?;
        s.serialize_field(
            "in_flight",
            &state.map_or(0, |st| st.in_flight.load(Ordering::Relaxed)),
        )?;
        let gate = self.gate().map(|g| g.usage());
        s.serialize_field("connections", &gate)?;
        s.serialize_field(
            "retries_in_flight",
            &self.retries.get().map_or(0, |r| r.load(Ordering::Relaxed)),
        )?;
        let breaker = match (
            state.and_then(|st| st.breaker.as_ref()),
            &self.policy.circuit_breaker,
        ) {
            (Some(b), Some(c)) => Some(b.state_name(c.force)),
            (None, Some(c)) => Some(Breaker::idle_state_name(c.force)),
            _ => None,
        };
        s.serialize_field("circuit_breaker_state", &breaker)?;
        s.end()
    }
}

/// One request counted under a backend's cap, until dropped.
#[derive(Debug)]
struct InFlight(Arc<RuntimeState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight_gauge.decrement(1.0);
    }
}

/// One retry counted under a backend's `max_concurrent_retries`, until dropped.
#[derive(Debug)]
pub(crate) struct RetrySlot(Option<Arc<AtomicU32>>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The breaker's defaults (the proto's).
pub(crate) const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
pub(crate) const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_BREAKER_OPEN: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_BREAKER_PROBES: u32 = 1;
