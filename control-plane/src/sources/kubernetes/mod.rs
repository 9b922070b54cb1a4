//! The `kubernetes` source (`SHOAL_CP_KUBERNETES=true`): Services, EndpointSlices and Pods watched from the API
//! server, published as Shoal services and endpoints (docs/kubernetes.md, "Discovery").
//!
//! - [`translate`]: the mapping of each object to Shoal's model, pure.
//! - [`cluster`]: the watched objects and the indexes from an event to the Services it touches; relists are
//!   collected on the side and applied as a difference.
//! - [`token_review`]: the TokenReview client that verifies proxies' service-account tokens for `Certify`.
//! - [`lease`], [`ca_state`], [`ca_propagation`]: high availability — the Lease of the replica that runs CA
//!   rotation, the CA record every replica shares (a Secret), and the replicas' propagation reports (a
//!   ConfigMap).
//! - this module: the API client (in-cluster service account by default), the three watchers and the loop
//!   that publishes what changed.
//!
//! The watchers are kube-runtime's: a list, then a watch from the list's `resourceVersion` with bookmarks; a
//! watch that ends or breaks resumes from the last version seen (an event's or a bookmark's), and one answered
//! `410 Gone` relists. Failures are retried with backoff (0.8 s doubling to 30 s, jittered).

pub mod ca_propagation;
pub mod ca_state;
mod cluster;
pub mod lease;
mod policy;
mod token_review;
mod translate;

pub use token_review::KubeTokenReview;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use tokio::sync::watch as signal;

use self::cluster::{Cluster, Event};
use self::translate::{ObjKey, key_of};
use super::{EndpointSource, Publisher};
use crate::identity::spiffe::TrustDomain;

/// The in-cluster service account's token, the default of `SHOAL_CP_KUBERNETES_TOKEN_FILE`.
pub const IN_CLUSTER_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The in-cluster API server's CA bundle, the default of `SHOAL_CP_KUBERNETES_CA_FILE`.
pub const IN_CLUSTER_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The audience proxies' projected tokens are requested for and checked against, the default of
/// `SHOAL_CP_KUBERNETES_AUDIENCES` (and of the injector's `token_audience`).
pub const DEFAULT_AUDIENCE: &str = "shoal";

/// How to reach the API server (the `SHOAL_CP_KUBERNETES_*` settings, checked by `server::config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// `http://` or `https://` URL of the API server.
    pub api_url: String,
    /// Bearer token file, re-read by the client every minute (projected tokens rotate).
    pub token_file: PathBuf,
    /// CA bundle (PEM) the API server's certificate must chain to; `None` for an `http://` URL.
    pub ca_file: Option<PathBuf>,
    /// Audiences a proxy's service-account token must be for (TokenReview `spec.audiences`).
    pub audiences: Vec<String>,
}

/// The API server cannot be used as configured; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubernetesError(String);

/// The Kubernetes endpoint source: connected, not yet watching.
pub struct KubernetesSource {
    client: Client,
    trust_domain: TrustDomain,
    audiences: Vec<String>,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSource")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl KubernetesSource {
    /// Checks the token and CA files and builds the API client; nothing is sent yet (the watchers retry until
    /// the API server answers, so a control plane can start before it).
    pub async fn connect(
        config: &KubernetesConfig,
        trust_domain: TrustDomain,
    ) -> Result<Self, KubernetesError> {
        use crate::server::config::env;
        let url: http::Uri = config.api_url.parse().map_err(|e| {
            KubernetesError(format!(
                "{}={:?}: {e}",
                env::KUBERNETES_API_URL,
                config.api_url
            ))
        })?;
        let token = read(&config.token_file, env::KUBERNETES_TOKEN_FILE).await?;
        let token = String::from_utf8_lossy(&token);
        let problem = if token.trim().is_empty() {
            Some("the token file is empty")
        } else if token.trim() != token {
            // The client sends the file as it is (it is re-read as the kubelet rotates it), and a header
            // value cannot carry a line break: every request would fail.
            Some(
                "the token starts or ends with white space (a newline?); write it without, e.g. printf '%s' \"$TOKEN\" > FILE",
            )
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(KubernetesError(format!(
                "{}={}: {problem}",
                env::KUBERNETES_TOKEN_FILE,
                config.token_file.display()
            )));
        }
        let mut kube = kube::Config::new(url);
        kube.auth_info.token_file = Some(config.token_file.display().to_string());
        kube.connect_timeout = Some(Duration::from_secs(10));
        kube.write_timeout = Some(Duration::from_secs(10));
        if let Some(ca_file) = &config.ca_file {
            kube.root_cert = Some(ca_certificates(ca_file).await?);
            // Re-read by the client about every minute, so a rotated cluster CA is picked up.
            kube.root_cert_file = Some(ca_file.clone());
        }
        let client = Client::try_from(kube).map_err(|e| {
            KubernetesError(format!(
                "cannot build the Kubernetes API client for {}={}: {e}",
                env::KUBERNETES_API_URL,
                config.api_url
            ))
        })?;
        Ok(Self {
            client,
            trust_domain,
            audiences: config.audiences.clone(),
        })
    }

    /// The verifier of proxies' projected service-account tokens: TokenReview through this source's client,
    /// for the configured audiences (`SHOAL_CP_KUBERNETES_AUDIENCES`).
    pub fn token_verifier(&self) -> crate::identity::credentials::KubernetesTokens {
        crate::identity::credentials::KubernetesTokens::new(
            std::sync::Arc::new(KubeTokenReview::new(self.client.clone())),
            self.audiences.clone(),
        )
    }
}

impl KubernetesSource {
    /// Starts the election for the Lease that gives one replica the CA-rotation state machine ([`lease`]);
    /// the receiver says whether this replica holds it. The replica's identity is its host name (the pod's
    /// name in Kubernetes) and process id.
    pub fn elect(
        &self,
        namespace: &str,
        closing: signal::Receiver<bool>,
    ) -> signal::Receiver<bool> {
        lease::elect(self.client.clone(), namespace, replica_id(), closing)
    }

    /// The CA record shared by the replicas: the Secret [`ca_state::SECRET_NAME`] in `namespace`. Call it from
    /// the runtime (the backend keeps its handle to run its calls from blocking threads). Start-up keeps trying
    /// to reach it for `start_deadline`.
    pub fn ca_backend(&self, namespace: &str, start_deadline: Duration) -> ca_state::SecretBackend {
        ca_state::SecretBackend::new(
            self.client.clone(),
            namespace,
            tokio::runtime::Handle::current(),
            start_deadline,
        )
    }

    /// The join tokens shared by the replicas: the Secret [`ca_state::JOIN_TOKENS_SECRET`] in `namespace`.
    /// Call it from within the runtime (its calls enter it from blocking threads).
    pub fn join_tokens_backend(&self, namespace: &str) -> ca_state::SecretBackend {
        ca_state::SecretBackend::join_tokens(
            self.client.clone(),
            namespace,
            tokio::runtime::Handle::current(),
        )
    }

    /// Starts this replica's CA propagation reports in the ConfigMap [`ca_propagation::CONFIGMAP_NAME`] of
    /// `namespace`; the returned tracker holds the other replicas' reports as the Lease holder (`leader`) reads
    /// them, for the upkeep task.
    pub fn ca_reports(
        &self,
        namespace: &str,
        identity: crate::identity::Identity,
        hub: std::sync::Arc<crate::discovery::Hub>,
        leader: signal::Receiver<bool>,
        closing: signal::Receiver<bool>,
    ) -> std::sync::Arc<crate::identity::replicas::Replicas> {
        let replicas = std::sync::Arc::new(crate::identity::replicas::Replicas::new(replica_id()));
        tokio::spawn(ca_propagation::run(
            self.client.clone(),
            namespace.to_owned(),
            identity,
            hub,
            replicas.clone(),
            leader,
            closing,
        ));
        replicas
    }
}

/// This replica's identity (its Lease holder identity and its key in the propagation reports): its host name
/// (the pod's name in Kubernetes) and process id.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "shoal-control-plane".to_owned());
    format!("{host}_{}", std::process::id())
}

async fn read(path: &Path, setting: &str) -> Result<Vec<u8>, KubernetesError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| KubernetesError(format!("{setting}={}: cannot read it: {e}", path.display())))
}

/// The DER certificates of a PEM bundle; an empty or unreadable bundle is an error naming the setting.
async fn ca_certificates(path: &Path) -> Result<Vec<Vec<u8>>, KubernetesError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let setting = crate::server::config::env::KUBERNETES_CA_FILE;
    let pem = read(path, setting).await?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| KubernetesError(format!("{setting}={}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(KubernetesError(format!(
            "{setting}={}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    Slices,
    Pods,
    /// A policy kind: its index in `policy::WATCHED`.
    Policy(usize),
}

impl Kind {
    /// The resource's plural name: the `kind` label of metrics and logs.
    fn as_str(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::Slices => "endpointslices",
            Self::Pods => "pods",
            Self::Policy(index) => policy::WATCHED[index].label,
        }
    }

    /// `marker` as an update of this kind.
    fn update(self, marker: Marker) -> Update {
        fn event<T>(marker: Marker) -> Event<T> {
            match marker {
                Marker::ListStart => Event::Relist,
                Marker::ListDone => Event::RelistDone,
                Marker::Deleted(key) => Event::Delete(key),
            }
        }
        match self {
            Self::Services => Update::Services(event(marker)),
            Self::Slices => Update::Slices(event(marker)),
            Self::Pods => Update::Pods(event(marker)),
            Self::Policy(index) => Update::Policy(index, event(marker)),
        }
    }
}

/// The events every kind says the same way, without an object.
enum Marker {
    ListStart,
    ListDone,
    Deleted(ObjKey),
}

/// One watcher's output, projected.
enum Update {
    Services(Event<crate::model::Service>),
    Slices(Event<translate::Slice>),
    Pods(Event<String>),
    /// A policy object (Shoal custom resource, Gateway API route) of `policy::WATCHED[index]`.
    Policy(usize, Event<policy::Watched>),
    /// A failed list or watch (retried with backoff), and the kind it was for.
    Failed(Kind, watcher::Error),
}

impl Update {
    /// The same projection as part of a list in progress.
    fn listed(self) -> Self {
        fn listed<T>(e: Event<T>) -> Event<T> {
            match e {
                Event::Apply(k, v) => Event::Listed(k, v),
                other => other,
            }
        }
        match self {
            Self::Services(e) => Self::Services(listed(e)),
            Self::Slices(e) => Self::Slices(listed(e)),
            Self::Pods(e) => Self::Pods(listed(e)),
            Self::Policy(index, e) => Self::Policy(index, listed(e)),
            failed => failed,
        }
    }
}

/// A watcher of all `K` in the cluster, each object projected by `project`.
fn watch<K>(
    client: &Client,
    kind: Kind,
    project: impl Fn(&K) -> Update + Send + 'static,
) -> BoxStream<'static, Update>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| match event {
            Ok(WatchEvent::Init) => kind.update(Marker::ListStart),
            Ok(WatchEvent::InitDone) => kind.update(Marker::ListDone),
            Ok(WatchEvent::InitApply(obj)) => project(&obj).listed(),
            Ok(WatchEvent::Apply(obj)) => project(&obj),
            Ok(WatchEvent::Delete(obj)) => kind.update(Marker::Deleted(key_of(obj.meta()))),
            Err(e) => Update::Failed(kind, e),
        })
        .boxed()
}

/// A watcher of all objects of `policy::WATCHED[index]` in the cluster.
fn watch_policy(client: &Client, index: usize) -> BoxStream<'static, Update> {
    let resource = policy::WATCHED[index].api_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let kind = Kind::Policy(index);
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| match event {
            Ok(WatchEvent::Init) => kind.update(Marker::ListStart),
            Ok(WatchEvent::InitDone) => kind.update(Marker::ListDone),
            Ok(WatchEvent::InitApply(obj)) => Update::Policy(
                index,
                Event::Apply(key_of(&obj.metadata), Some(policy::Watched::of(&obj))),
            )
            .listed(),
            Ok(WatchEvent::Apply(obj)) => Update::Policy(
                index,
                Event::Apply(key_of(&obj.metadata), Some(policy::Watched::of(&obj))),
            ),
            Ok(WatchEvent::Delete(obj)) => kind.update(Marker::Deleted(key_of(&obj.metadata))),
            Err(e) => Update::Failed(kind, e),
        })
        .boxed()
}

/// Whether `error` is a first list answered 404: the kind is not served (a CRD not installed).
fn not_installed(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404)
}

/// Applies `update` to `cluster`: the kind, whether a list completed, and the Services touched; `None` for
/// a failure (logged and counted here).
fn apply(
    cluster: &mut Cluster,
    policies: &mut policy::Policies,
    update: Update,
) -> Option<(Kind, bool, BTreeSet<ObjKey>)> {
    Some(match update {
        Update::Policy(index, e) => {
            let ends = e.ends_list();
            if ends && policies.listed(index) {
                let kind = policy::WATCHED[index].label;
                metrics::gauge!("shoal_cp_kubernetes_crd_missing", "kind" => kind).set(0.0);
                tracing::info!(
                    kind,
                    "the API server serves {kind} now; its objects are read"
                );
            }
            if !policies.event(index, e) && !ends {
                return None;
            }
            (Kind::Policy(index), ends, BTreeSet::new())
        }
        Update::Failed(Kind::Policy(index), error) if not_installed(&error) => {
            let kind = policy::WATCHED[index].label;
            metrics::counter!("shoal_cp_kubernetes_watch_errors_total", "kind" => kind)
                .increment(1);
            if !policies.not_installed(index) {
                tracing::debug!(kind, %error, "still not installed");
                return None;
            }
            metrics::gauge!("shoal_cp_kubernetes_crd_missing", "kind" => kind).set(1.0);
            tracing::warn!(
                kind,
                "the API server does not serve {kind} (404): its CustomResourceDefinition is not installed, so \
                 none are read; it is listed again with backoff (at most every 30 s) and its objects are served \
                 once it is installed"
            );
            (Kind::Policy(index), false, BTreeSet::new())
        }
        Update::Services(e) => (Kind::Services, e.ends_list(), cluster.service_event(e)),
        Update::Slices(e) => (Kind::Slices, e.ends_list(), cluster.slice_event(e)),
        Update::Pods(e) => (Kind::Pods, e.ends_list(), cluster.pod_event(e)),
        Update::Failed(kind, error) => {
            let kind = kind.as_str();
            metrics::counter!("shoal_cp_kubernetes_watch_errors_total", "kind" => kind)
                .increment(1);
            tracing::warn!(
                kind,
                %error,
                "kubernetes watch failed; retrying with backoff (what is known is kept meanwhile)"
            );
            return None;
        }
    })
}

impl EndpointSource for KubernetesSource {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn run(
        self: Box<Self>,
        mut publisher: Publisher,
        mut closing: signal::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let KubernetesSource {
            client,
            trust_domain,
            ..
        } = *self;
        async move {
            let services = watch::<KubeService>(&client, Kind::Services, |svc| {
                let key = key_of(&svc.metadata);
                let projected = translate::service(svc).unwrap_or_else(|reason| {
                    let service = format!("{}.{}", key.1, key.0);
                    tracing::warn!(service, %reason, "kubernetes service not served");
                    None
                });
                Update::Services(Event::Apply(key, projected))
            });
            let slices = watch::<EndpointSlice>(&client, Kind::Slices, |s| {
                Update::Slices(Event::Apply(key_of(&s.metadata), translate::slice(s)))
            });
            let pods = watch::<Pod>(&client, Kind::Pods, move |pod| {
                let identity = translate::pod_identity(pod, &trust_domain);
                Update::Pods(Event::Apply(key_of(&pod.metadata), identity))
            });
            let mut streams = vec![services, slices, pods];
            streams.extend((0..policy::WATCHED.len()).map(|index| watch_policy(&client, index)));
            let mut updates = futures_util::stream::select_all(streams);
            let status = policy::status::writer(client.clone());
            let mut cluster = Cluster::default();
            let mut policies = policy::Policies::default();
            let mut published_once = false;
            let mut policies_evaluated = false;
            loop {
                let update = tokio::select! {
                    update = updates.next() => match update {
                        Some(update) => update,
                        None => return,
                    },
                    _ = closing.wait_for(|c| *c) => return,
                };
                let Some((kind, listed, touched)) = apply(&mut cluster, &mut policies, update)
                else {
                    continue;
                };
                if listed {
                    let (kind, changed_services) = (kind.as_str(), touched.len());
                    metrics::counter!("shoal_cp_kubernetes_lists_total", "kind" => kind)
                        .increment(1);
                    tracing::info!(kind, changed_services, "kubernetes list applied");
                }
                if !cluster.synced() {
                    continue;
                }
                let first = !published_once;
                let touched = if published_once {
                    touched
                } else {
                    published_once = true;
                    cluster.all_services()
                };
                publish(&mut publisher, &cluster, &touched);
                if first {
                    // Logged once every Service is in the catalog (what a proxy can be sent).
                    tracing::info!(
                        services = cluster.services.len(),
                        endpoint_slices = cluster.slices.len(),
                        meshed_pods = cluster.pods.len(),
                        "kubernetes source synced"
                    );
                }
                // Policies are checked against the Services: again when a policy or a Service changed.
                let reevaluate = first
                    || matches!(kind, Kind::Policy(_))
                    || (kind == Kind::Services && !touched.is_empty());
                if reevaluate {
                    let outcome = policies.evaluate(&cluster.service_definitions());
                    for (source, contributions) in outcome.sources {
                        publisher.set_source(&source, contributions);
                    }
                    for patch in outcome.patches {
                        let _ = status.send(patch);
                    }
                    if !policies_evaluated && policies.synced() {
                        policies_evaluated = true;
                        let counts = policies.counts();
                        let not_installed = policies.missing();
                        tracing::info!(?counts, ?not_installed, "kubernetes policies synced");
                    }
                }
            }
        }
        .boxed()
    }
}

/// Publishes the current state of each Service in `touched`: its `SERVICE` resource (with its virtual
/// addresses) and its endpoints, or their withdrawal when it is gone.
fn publish(publisher: &mut Publisher, cluster: &Cluster, touched: &BTreeSet<ObjKey>) {
    for key in touched {
        let qualified = format!("{}.{}", key.1, key.0);
        match cluster.view(key) {
            Some((service, endpoints)) => {
                publisher.set_service(&qualified, Some(service));
                publisher.set(&qualified, endpoints);
            }
            None => {
                publisher.set(&qualified, Vec::new());
                publisher.set_service(&qualified, None);
            }
        }
    }
    // Counting every published endpoint is O(services): only when the line is logged.
    if !touched.is_empty() && tracing::enabled!(tracing::Level::DEBUG) {
        let endpoints: usize = publisher.published().values().map(Vec::len).sum();
        tracing::debug!(
            source = "kubernetes",
            services = publisher.published().len(),
            endpoints,
            "endpoint source published"
        );
    }
}

#[cfg(test)]
mod tests;
