//! The operator-facing Admin API (`shoal.v1.Admin`) over the [`Store`]: resource CRUD with optimistic
//! concurrency, `Watch`, registration heartbeats and proxy sync status.
//!
//! Every error becomes a gRPC status in [`errors`] (the codes `admin.proto` documents); every call is counted
//! in [`metrics`]. Join tokens and the CA (`identity`) are served over [`crate::identity::Identity`].

mod errors;
mod identity;
pub mod metrics;
mod registrations;
mod request;
mod resources;
mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::v1;
use shoal_proto::v1::admin_server::{Admin, AdminServer};
use tonic::{Request, Response, Status};

use crate::model::{ResourceKey, ResourceKind};
use crate::store::{self, Store};
use registrations::Registrations;
pub use watch::WatchStream;

/// Where `Status` learns which proxies are connected and how far each is in sync: implemented by the
/// discovery server, which holds that state.
pub trait StatusSource: Send + Sync {
    /// Every connected proxy.
    fn proxies(&self) -> Vec<v1::ProxyStatus>;
}

/// A [`StatusSource`] with no proxies, for a control plane without discovery (and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyStatus;

impl StatusSource for EmptyStatus {
    fn proxies(&self) -> Vec<v1::ProxyStatus> {
        Vec::new()
    }
}

/// The Admin service. Cheap to clone; clones share the store, the registration leases and the close signal.
#[derive(Clone)]
pub struct AdminService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    status: Arc<dyn StatusSource>,
    registrations: Arc<Registrations>,
    /// Turns true on [`AdminService::close`]; ends `Watch` streams and the expiry task.
    closing: tokio::sync::watch::Sender<bool>,
    /// The CA and join tokens; `None` for an embedded control plane without identity (and older tests).
    identity: Option<crate::identity::Identity>,
    /// Policies come from Kubernetes custom resources: writes of every kind but registrations are refused.
    kubernetes_policies: std::sync::atomic::AtomicBool,
}

impl AdminService {
    /// The service over `store`, with proxy status from `status`.
    ///
    /// Spawns the registration expiry task, so call it inside a Tokio runtime. The task ends with
    /// [`Self::close`], or when the last clone of the service is dropped.
    pub fn new(store: Store, status: Arc<dyn StatusSource>) -> Self {
        Self::with_identity(store, status, None)
    }

    /// Like [`Self::new`], also serving join tokens and the CA from `identity` (without it those calls
    /// answer `FAILED_PRECONDITION`).
    pub fn with_identity(
        store: Store,
        status: Arc<dyn StatusSource>,
        identity: Option<crate::identity::Identity>,
    ) -> Self {
        let (closing, closed) = tokio::sync::watch::channel(false);
        let registrations = Arc::new(Registrations::default());
        let expiry = registrations::expire(
            store.clone(),
            registrations.clone(),
            closed,
            registrations::CHECK_INTERVAL,
        );
        tokio::spawn(expiry);
        let inner = Inner {
            store,
            status,
            registrations,
            closing,
            identity,
            kubernetes_policies: std::sync::atomic::AtomicBool::new(false),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Refuses writes of every kind but endpoint registrations, naming kubectl: in Kubernetes mode the
    /// custom resources are the source of truth (docs/kubernetes.md, "Policy as custom resources").
    pub fn with_policies_from_kubernetes(self) -> Self {
        (self.inner.kubernetes_policies).store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The tonic server for this service, to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }

    /// Ends every open `Watch` stream and stops registration expiry, so a graceful shutdown does not wait
    /// for clients that would watch forever. Calls after this still work.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    fn heartbeat_registration(
        &self,
        req: &v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatResponse, Status> {
        if req.name.is_empty() {
            return Err(errors::bad_field(
                "name",
                "required: the registration's name",
            ));
        }
        let namespace = request::namespace_or_default(&req.namespace);
        let key = ResourceKey::new(ResourceKind::EndpointRegistration, namespace, &req.name);
        let Some(stored) = self.inner.store.get(&key) else {
            let error = store::Error::NotFound { key };
            let status = errors::from_store(&error);
            let message = format!(
                "{}: it expired or was never registered; register it again with Create",
                status.message()
            );
            return Err(Status::not_found(message));
        };
        let ttl = self.inner.registrations.renew(&stored);
        let expires_at = ttl.map_or(0, |ttl| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH);
            (now.unwrap_or_default() + ttl + Duration::from_millis(999)).as_secs()
        });
        Ok(v1::HeartbeatResponse {
            expires_at_unix_seconds: expires_at,
        })
    }

    fn proxy_status(&self, req: &v1::StatusRequest) -> v1::StatusResponse {
        let mut proxies = self.inner.status.proxies();
        proxies.retain(|proxy| {
            let namespace = proxy.workload.as_ref().map(|w| w.namespace.as_str());
            (req.namespace.is_empty() || namespace == Some(req.namespace.as_str()))
                && (req.proxy_id.is_empty() || proxy.proxy_id == req.proxy_id)
        });
        proxies.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        v1::StatusResponse { proxies }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(
        &self,
        req: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        let result = self.apply_resource(req.into_inner()).await;
        metrics::request("Apply", result).map(Response::new)
    }

    async fn create(
        &self,
        req: Request<v1::CreateRequest>,
    ) -> Result<Response<v1::CreateResponse>, Status> {
        let result = self.create_resource(req.into_inner()).await;
        metrics::request("Create", result).map(Response::new)
    }

    async fn replace(
        &self,
        req: Request<v1::ReplaceRequest>,
    ) -> Result<Response<v1::ReplaceResponse>, Status> {
        let result = self.replace_resource(req.into_inner()).await;
        metrics::request("Replace", result).map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let result = self.delete_resource(req.into_inner()).await;
        metrics::request("Delete", result).map(Response::new)
    }

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<v1::GetResponse>, Status> {
        let result = self.get_resource(req.get_ref());
        metrics::request("Get", result).map(Response::new)
    }

    async fn list(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let result = self.list_resources(req.get_ref());
        metrics::request("List", result).map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<v1::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let closing = self.inner.closing.subscribe();
        let result = watch::start(self.inner.store.clone(), req.get_ref(), closing);
        metrics::request("Watch", result).map(Response::new)
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let result = self.heartbeat_registration(req.get_ref());
        metrics::request("Heartbeat", result).map(Response::new)
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let result = Ok(self.proxy_status(req.get_ref()));
        metrics::request("Status", result).map(Response::new)
    }

    async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let result = self.create_token(req.into_inner()).await;
        metrics::request("CreateJoinToken", result).map(Response::new)
    }

    async fn list_join_tokens(
        &self,
        req: Request<v1::ListJoinTokensRequest>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        let result = self.list_tokens(req.into_inner()).await;
        metrics::request("ListJoinTokens", result).map(Response::new)
    }

    async fn revoke_join_token(
        &self,
        req: Request<v1::RevokeJoinTokenRequest>,
    ) -> Result<Response<v1::RevokeJoinTokenResponse>, Status> {
        let result = self.revoke_token(req.into_inner()).await;
        metrics::request("RevokeJoinToken", result).map(Response::new)
    }

    async fn rotate_ca(
        &self,
        req: Request<v1::RotateCaRequest>,
    ) -> Result<Response<v1::RotateCaResponse>, Status> {
        let result = self.rotate(req.into_inner()).await;
        metrics::request("RotateCa", result).map(Response::new)
    }

    async fn ca_status(
        &self,
        _: Request<v1::CaStatusRequest>,
    ) -> Result<Response<v1::CaStatusResponse>, Status> {
        let result = self.ca_state();
        metrics::request("CaStatus", result).map(Response::new)
    }
}
