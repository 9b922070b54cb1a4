//! Discovery: the proxy-facing gRPC stream (`shoal.v1.Discovery`).
//!
//! - [`catalog`]: the resources proxies can subscribe to, derived from the store (and endpoint
//!   sources), with content-hash versions that survive restarts.
//! - [`hub`]: follows the store, updates the catalog, and broadcasts which keys changed.
//! - [`stream`]: one proxy's session: `Hello` (with held versions for resync), on-demand
//!   subscriptions, incremental pushes, ACK/NACK bookkeeping.
//! - [`registry`]: connected proxies and their per-resource sync state (Admin `Status`).
//! - [`peer`]: the transport and verified identity of each proxy's stream, checked against the
//!   workload it registered as.
//! - [`response`]: responses assembled from resources encoded once and shared by every stream,
//!   and the tonic codec that writes them.

pub mod catalog;
pub mod hub;
#[cfg(test)]
mod hub_tests;
pub mod peer;
pub mod registry;
mod response;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};

pub use hub::Hub;
pub use stream::Outbox;

/// Describes the discovery metrics (call once the recorder is installed).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "shoal_cp_connected_proxies",
        "Proxies with an open discovery stream"
    );
    describe_counter!(
        "shoal_cp_subscriptions_total",
        "Resources proxies subscribed to"
    );
    describe_counter!(
        "shoal_cp_pushes_total",
        "Discovery responses sent to proxies"
    );
    describe_histogram!(
        "shoal_cp_push_ack_seconds",
        Unit::Seconds,
        "Time from sending a discovery response to the proxy's ACK"
    );
    describe_counter!(
        "shoal_cp_nacks_total",
        "Discovery responses proxies rejected"
    );
    describe_counter!(
        "shoal_cp_catalog_changes_total",
        "Discovery resources that changed (pushed to subscribers)"
    );
}

/// The gRPC path of `shoal.v1.Discovery/Stream`.
const STREAM_PATH: &str = "/shoal.v1.Discovery/Stream";

/// The discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    hub: Arc<Hub>,
}

impl DiscoveryService {
    /// A service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// The server, ready to add to a tonic router.
    pub fn into_server(self) -> DiscoveryServer {
        DiscoveryServer { hub: self.hub }
    }
}

/// `shoal.v1.Discovery` served with [`response::DiscoveryCodec`] instead of the generated server
/// (whose codec would encode every response from a `DiscoveryResponse` message). The wire format is
/// the generated one: proxies use the generated client.
#[derive(Debug, Clone)]
pub struct DiscoveryServer {
    hub: Arc<Hub>,
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = "shoal.v1.Discovery";
}

/// The `Stream` method, as tonic's server machinery calls it.
struct StreamMethod(Arc<Hub>);

impl Service<Request<Streaming<shoal_proto::v1::DiscoveryRequest>>> for StreamMethod {
    type Response = tonic::Response<Outbox>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(
        &mut self,
        request: Request<Streaming<shoal_proto::v1::DiscoveryRequest>>,
    ) -> Self::Future {
        let peer = crate::server::PeerInfo::of(&request);
        let (tx, outbox) = stream::outbox();
        tokio::spawn(stream::run(self.0.clone(), peer, request.into_inner(), tx));
        Box::pin(async move { Ok(tonic::Response::new(outbox)) })
    }
}

impl<B> Service<http::Request<B>> for DiscoveryServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = StreamMethod(self.hub.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(response::DiscoveryCodec);
            Ok(grpc.streaming(method, req).await)
        })
    }
}
