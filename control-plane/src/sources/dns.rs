//! The `dns` source: services outside the mesh whose endpoints are the addresses of DNS names.
//!
//! Each distinct host of the endpoints file's `dns` entries gets a task that resolves it at start and again
//! when its records' TTL runs out (bounded to [[`MIN_TTL`], [`MAX_TTL`]], so a TTL of 0 does not hammer the
//! resolver and a day-long one still notices changes). A failed resolution is logged, the last good
//! addresses are kept, and it is retried with backoff. Resolution sits behind [`Resolve`], so tests inject
//! answers and TTLs.

mod resolver;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::file::EndpointsFile;
use super::{EndpointSource, Publisher};
use crate::model::Endpoint;

pub use resolver::SystemResolver;

/// Shortest time between two resolutions of a name (and the first retry after a failure).
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time between two resolutions of a name (and between retries after failures).
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// A resolution that takes longer than this counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The addresses of a name and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// IPv4 and IPv6 addresses.
    pub addresses: Vec<IpAddr>,
    /// Time to live of the answer (the smallest of its records').
    pub ttl: Duration,
}

/// Resolves a host name; an error is a message for the log.
pub trait Resolve: Send + Sync + 'static {
    /// The current addresses of `host`.
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Resolved, String>>;
}

/// When to resolve again after an answer with `ttl`.
pub fn bounded_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// When to retry after `failures` consecutive failures: [`MIN_TTL`], doubling up to [`MAX_TTL`].
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    MIN_TTL.saturating_mul(1 << doublings).min(MAX_TTL)
}

/// Publishes the addresses of the endpoints file's `dns` entries as endpoints of their services.
pub struct DnsSource {
    documents: watch::Receiver<Arc<EndpointsFile>>,
    resolver: Arc<dyn Resolve>,
}

impl std::fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSource").finish_non_exhaustive()
    }
}

impl DnsSource {
    /// A source following `documents`, resolving with `resolver`.
    pub fn new(documents: watch::Receiver<Arc<EndpointsFile>>, resolver: Arc<dyn Resolve>) -> Self {
        Self {
            documents,
            resolver,
        }
    }
}

/// A new answer for a host, from the task of that generation.
struct Answer {
    host: String,
    generation: u64,
    addresses: Vec<IpAddr>,
}

/// A host's resolution task and its last good addresses.
struct HostTask {
    generation: u64,
    task: tokio::task::JoinHandle<()>,
    addresses: Vec<IpAddr>,
}

impl EndpointSource for DnsSource {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn run(
        self: Box<Self>,
        mut publisher: Publisher,
        mut closing: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let Self {
            mut documents,
            resolver,
        } = *self;
        async move {
            let (tx, mut answers) = mpsc::channel::<Answer>(64);
            let mut hosts: HashMap<String, HostTask> = HashMap::new();
            let mut generation = 0;
            let mut config = documents.borrow_and_update().clone();
            loop {
                // Start a task for each new host, stop those of hosts no longer listed.
                hosts.retain(|host, t| {
                    let listed = config.dns.values().flatten().any(|d| &d.host == host);
                    if !listed {
                        t.task.abort();
                    }
                    listed
                });
                for target in config.dns.values().flatten() {
                    if !hosts.contains_key(&target.host) {
                        generation += 1;
                        let task = follow(target.host.clone(), generation, resolver.clone(), tx.clone());
                        let task = HostTask { generation, task: tokio::spawn(task), addresses: Vec::new() };
                        hosts.insert(target.host.clone(), task);
                    }
                }
                publish(&mut publisher, &config, &hosts);
                tokio::select! {
                    changed = documents.changed() => match changed {
                        Ok(()) => config = documents.borrow_and_update().clone(),
                        Err(_) => break,
                    },
                    Some(answer) = answers.recv() => {
                        // An answer from a task stopped since (its host removed, maybe re-added) is stale.
                        if let Some(t) = hosts.get_mut(&answer.host).filter(|t| t.generation == answer.generation) {
                            t.addresses = answer.addresses;
                        }
                    }
                    _ = closing.wait_for(|c| *c) => break,
                }
            }
            for t in hosts.values() {
                t.task.abort();
            }
        }
        .boxed()
    }
}

/// Publishes every `dns` service's endpoints: for each of its entries, one endpoint per address of the host.
fn publish(publisher: &mut Publisher, config: &EndpointsFile, hosts: &HashMap<String, HostTask>) {
    let mut services: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for (service, targets) in &config.dns {
        let endpoints = targets.iter().flat_map(|target| {
            let addresses = hosts
                .get(&target.host)
                .map_or(&[][..], |t| &t.addresses[..]);
            addresses.iter().map(|a| target.endpoint(*a))
        });
        let endpoints: Vec<Endpoint> = endpoints.collect();
        // A service none of whose names resolved yet has no endpoints (rather than an empty list).
        if !endpoints.is_empty() {
            services.insert(service.clone(), endpoints);
        }
    }
    let before = publisher.published().clone();
    publisher.replace_all(&services);
    if before != *publisher.published() {
        let endpoints: usize = services.values().map(Vec::len).sum();
        tracing::info!(
            source = "dns",
            services = services.len(),
            endpoints,
            "endpoint source published"
        );
    }
}

/// Resolves `host` now and whenever its answer expires, sending each change of its addresses.
async fn follow(
    host: String,
    generation: u64,
    resolver: Arc<dyn Resolve>,
    tx: mpsc::Sender<Answer>,
) {
    let mut last: Vec<IpAddr> = Vec::new();
    let mut failures = 0;
    loop {
        let answer = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(&host)).await;
        let answer =
            answer.unwrap_or_else(|_| Err(format!("no answer within {RESOLVE_TIMEOUT:?}")));
        let wait = match answer {
            Ok(Resolved { mut addresses, ttl }) if !addresses.is_empty() => {
                failures = 0;
                addresses.sort();
                addresses.dedup();
                let next = bounded_ttl(ttl);
                if addresses != last {
                    // Whole seconds: the remaining TTL of a cached answer has nanoseconds.
                    let ttl = Duration::from_secs(ttl.as_secs());
                    tracing::info!(
                        source = "dns",
                        host,
                        ?addresses,
                        ?ttl,
                        ?next,
                        "dns name resolved"
                    );
                    last = addresses.clone();
                    let answer = Answer {
                        host: host.clone(),
                        generation,
                        addresses,
                    };
                    if tx.send(answer).await.is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(source = "dns", host, next = ?next, "dns name unchanged");
                }
                next
            }
            failed => {
                let error = failed
                    .err()
                    .unwrap_or_else(|| "the name has no addresses".into());
                failures += 1;
                let retry = retry_after(failures);
                tracing::warn!(source = "dns", host, %error, kept = last.len(), retry_in = ?retry, "dns resolution failed; keeping the last good addresses");
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
