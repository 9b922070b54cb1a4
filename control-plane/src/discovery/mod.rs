//! Discovery: the proxy-facing gRPC stream (`shoal.v1.Discovery`).
//!
//! - [`catalog`]: the resources proxies can subscribe to, derived from the store (and endpoint
//!   sources), with content-hash versions that survive restarts.
//! - [`hub`]: follows the store, updates the catalog, and broadcasts which keys changed.
//! - [`stream`]: one proxy's session: `Hello` (with held versions for resync), on-demand
//!   subscriptions, incremental pushes, ACK/NACK bookkeeping.
//! - [`registry`]: connected proxies and their per-resource sync state (Admin `Status`).

pub mod catalog;
pub mod hub;
pub mod registry;
mod stream;

use std::sync::Arc;

use shoal_proto::v1;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

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

/// Responses queued per stream before the stream task waits for the proxy to read.
const OUTBOX: usize = 16;

/// The tonic service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    hub: Arc<Hub>,
}

impl DiscoveryService {
    /// A service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// The generated server wrapper, ready to add to a tonic router.
    pub fn into_server(self) -> v1::discovery_server::DiscoveryServer<Self> {
        v1::discovery_server::DiscoveryServer::new(self)
    }
}

#[tonic::async_trait]
impl v1::discovery_server::Discovery for DiscoveryService {
    type StreamStream = Outbox;

    async fn stream(
        &self,
        request: Request<Streaming<v1::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let address = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let (tx, rx) = mpsc::channel(OUTBOX);
        tokio::spawn(stream::run(
            self.hub.clone(),
            address,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Outbox(rx)))
    }
}
