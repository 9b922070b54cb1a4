//! Endpoint sources: where service endpoints come from besides registrations in the store.
//!
//! Every source implements [`EndpointSource`]: it runs as a task and publishes, per service, that service's
//! current endpoint list into the discovery [`Hub`] through a [`Publisher`]. The hub merges the lists of every
//! source (and of registrations) into the service's `ENDPOINTS` resource.
//!
//! - [`file`]: the endpoints file (`SHOAL_CP_ENDPOINTS_FILE`): its format, parsing and validation.
//! - [`watch`]: polls the file and hands every valid new version to the sources; an invalid edit is logged
//!   and the last good content kept.
//! - [`static_file`]: the `file` source: the file's `services` as they are written.
//! - [`dns`]: the `dns` source: the file's `dns` entries, names resolved with hickory-resolver and
//!   re-resolved on their TTL.
//! - [`kubernetes`]: the `kubernetes` source (`SHOAL_CP_KUBERNETES=true`): Services, EndpointSlices and Pods
//!   watched from the API server; it publishes services ([`Publisher::set_service`]) as well as endpoints.

pub mod dns;
pub mod file;
pub mod kubernetes;
pub mod static_file;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use shoal_proto::v1;
use tokio::sync::watch as signal;

use crate::discovery::Hub;
use crate::discovery::catalog::{Contribution, Key, key};
use crate::model::{Endpoint, Metadata, Resource, Service, Spec};

pub use file::{EndpointsFile, FileError};

/// A source of service endpoints: a named task that publishes each service's current endpoints.
///
/// A source owns what it publishes under its name, next to what other sources publish for the same service:
/// proxies see the union. Publishing an empty list, or [`Publisher::remove`], withdraws the source's
/// endpoints of that service. Each endpoint goes into the hub as `Contribution::Endpoint` under
/// `(ENDPOINTS, service)` plus an `(ADDRESS, "ip:port")` binding, from the hub source
/// `"{name}/{service}/{ip:port}"` (see [`Publisher`] for why one per endpoint).
///
/// Implemented by the static file source ([`static_file::StaticFileSource`]), the DNS source
/// ([`dns::DnsSource`]) and the Kubernetes source ([`kubernetes::KubernetesSource`], which watches the API
/// server and publishes one list per Service, and the Service itself).
pub trait EndpointSource: Send + 'static {
    /// Short stable name (`file`, `dns`, `kubernetes`): the prefix of the hub source names and of log
    /// lines.
    fn name(&self) -> &'static str;

    /// Runs until `closing` turns true, publishing through `publisher` (created for [`Self::name`]).
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        closing: signal::Receiver<bool>,
    ) -> BoxFuture<'static, ()>;
}

/// Starts `source` as a task feeding `hub`.
pub fn spawn(
    source: Box<dyn EndpointSource>,
    hub: Arc<Hub>,
    closing: signal::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let publisher = Publisher::new(hub, source.name());
    tokio::spawn(source.run(publisher, closing))
}

/// Publishes one source's per-service endpoint lists into the hub, remembering what it published so that
/// unchanged endpoints are not re-sent and services that disappear can be withdrawn.
///
/// The catalog keeps one contribution per hub source and key, so each endpoint is its own hub source
/// (`"{source}/{service}/{ip:port}"`, plus `#{service_port}` when set): a list of N endpoints is N
/// `Hub::set_source` calls, only for the endpoints that changed. Additions go before removals, so a
/// service that keeps endpoints never shows an empty list in between; discovery streams send the latest
/// state, so a burst usually reaches a proxy as one push.
#[derive(Debug)]
pub struct Publisher {
    hub: Arc<Hub>,
    source: &'static str,
    published: BTreeMap<String, Vec<Endpoint>>,
    /// Services this source defines ([`Self::set_service`]).
    services: BTreeMap<String, Service>,
}

impl Publisher {
    /// A publisher for the source named `source`.
    pub fn new(hub: Arc<Hub>, source: &'static str) -> Self {
        Self {
            hub,
            source,
            published: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }

    /// Sets (or with `None` withdraws) the `SERVICE` resource `service` (qualified name) from this source,
    /// with the `ADDRESS` bindings of its virtual addresses, as a stored Service contributes them. A Service in
    /// the store with the same name takes precedence in the catalog (an operator's explicit configuration).
    pub fn set_service(&mut self, service: &str, definition: Option<&Service>) {
        if self.services.get(service) == definition {
            return;
        }
        let contributions = match definition {
            Some(s) => crate::discovery::hub::contributions(&Resource {
                metadata: Metadata {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    ..Metadata::default()
                },
                spec: Spec::Service(s.clone()),
            }),
            None => Vec::new(),
        };
        self.hub
            .set_source(&format!("{}-service/{service}", self.source), contributions);
        match definition {
            Some(s) => self.services.insert(service.to_owned(), s.clone()),
            None => self.services.remove(service),
        };
    }

    /// Replaces what the catalog source `source` contributes (the policy resources a source serves, named
    /// by that source: `kubernetes-crd/...`).
    pub fn set_source(&self, source: &str, contributions: Vec<(Key, Contribution)>) {
        self.hub.set_source(source, contributions);
    }

    /// Sets `service`'s endpoints from this source (qualified name `name.namespace`). An empty list
    /// withdraws them. Of endpoints with the same address, port and service port, the first is kept.
    pub fn set(&mut self, service: &str, endpoints: Vec<Endpoint>) {
        let mut new: BTreeMap<String, Endpoint> = BTreeMap::new();
        for e in endpoints {
            new.entry(endpoint_id(&e)).or_insert(e);
        }
        let new: Vec<Endpoint> = new.into_values().collect();
        if self
            .published
            .get(service)
            .map_or(new.is_empty(), |old| *old == new)
        {
            return;
        }
        // One catalog source per (source, service): the whole list is replaced in one step, so
        // proxies get one push per change and never see the service briefly empty.
        self.hub
            .set_source(&self.source_name(service), contributions(service, &new));
        if new.is_empty() {
            self.published.remove(service);
        } else {
            self.published.insert(service.to_string(), new);
        }
    }

    /// Withdraws everything this source published for `service`.
    pub fn remove(&mut self, service: &str) {
        self.set(service, Vec::new());
    }

    /// Makes `services` the complete set this source publishes: each is set, and every service published
    /// before but absent now is withdrawn.
    pub fn replace_all(&mut self, services: &BTreeMap<String, Vec<Endpoint>>) {
        for (service, endpoints) in services {
            self.set(service, endpoints.clone());
        }
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|s| !services.contains_key(*s))
            .cloned()
            .collect();
        for service in gone {
            self.remove(&service);
        }
    }

    /// The services currently published, with their endpoints (in a stable order).
    pub fn published(&self) -> &BTreeMap<String, Vec<Endpoint>> {
        &self.published
    }

    fn source_name(&self, service: &str) -> String {
        format!("{}/{service}", self.source)
    }
}

/// An endpoint's identity within a service, as the catalog tells them apart.
fn endpoint_id(e: &Endpoint) -> String {
    let socket = SocketAddr::new(e.address, e.port);
    match e.service_port {
        Some(p) => format!("{socket}#{p}"),
        None => socket.to_string(),
    }
}

/// What a source's endpoint list for `service` contributes to the catalog: one `ENDPOINTS` entry per
/// endpoint, and an `ADDRESS` binding per `ip:port` (transparent mode maps a connection's original
/// destination to the service), as registrations do (see `discovery::hub::contributions`).
pub fn contributions(service: &str, endpoints: &[Endpoint]) -> Vec<(Key, Contribution)> {
    let mut out = Vec::with_capacity(endpoints.len() * 2);
    for endpoint in endpoints {
        let address = SocketAddr::new(endpoint.address, endpoint.port).to_string();
        let binding = v1::AddressBinding {
            address: address.clone(),
            service: service.to_string(),
            service_port: endpoint.service_port.unwrap_or(endpoint.port).into(),
        };
        out.push((
            key(v1::ResourceType::Endpoints, service),
            Contribution::Endpoint(endpoint.into()),
        ));
        out.push((
            key(v1::ResourceType::Address, address),
            Contribution::Whole(v1::discovery_resource::Payload::Address(binding)),
        ));
    }
    out
}

/// The endpoint sources configured by `SHOAL_CP_ENDPOINTS_FILE`, loaded and checked, ready to start.
#[derive(Debug)]
pub struct Sources {
    watcher: watch::FileWatcher,
}

impl Sources {
    /// Reads and checks the endpoints file. At start-up there is no last good content to keep, so an
    /// invalid or missing file is an error (the control plane does not start).
    pub async fn load(path: &Path) -> Result<Self, FileError> {
        Ok(Self {
            watcher: watch::FileWatcher::load(path).await?,
        })
    }

    /// Starts the file watcher and both sources (`file`, `dns`) feeding `hub`; all stop once `closing`
    /// turns true.
    pub fn start(self, hub: &Arc<Hub>, closing: signal::Receiver<bool>) {
        let current = self.watcher.current();
        let (static_count, dns_count) = (current.services.len(), current.dns.len());
        tracing::info!(
            path = %self.watcher.path().display(),
            static_services = static_count,
            dns_services = dns_count,
            "endpoints file loaded"
        );
        let documents = self.watcher.subscribe();
        tokio::spawn(self.watcher.run(closing.clone()));
        let file = static_file::StaticFileSource::new(documents.clone());
        spawn(Box::new(file), hub.clone(), closing.clone());
        let dns = dns::DnsSource::new(documents, Arc::new(dns::SystemResolver::new()));
        spawn(Box::new(dns), hub.clone(), closing);
    }
}

#[cfg(test)]
mod tests;
