//! The split stage: a route rule's weighted pick of the backend service (a traffic shift); a
//! request that matched no rule goes to the service it named.

use std::net::SocketAddr;
use std::sync::Arc;

use super::route::Routed;
use crate::http::stack::{Exchange, Req, Service, stage};
use crate::retry::Retry;
use crate::state::Service as MeshService;

/// The backend a request goes to, and what the stages below it need from the rule.
#[derive(Debug)]
pub(super) struct Backend {
    /// The backend service.
    pub(super) service: Arc<MeshService>,
    /// The rule's retry policy, if any.
    pub(super) retry: Option<Arc<Retry>>,
    /// An endpoint to avoid when the backend has others: the one a retried attempt failed on.
    pub(super) avoid: Option<SocketAddr>,
}

stage! {
    /// The stage.
    pub(super) Split, SplitLayer
}

impl<'c, S> Service<Req<'c, Routed>> for Split<S>
where
    S: Service<Req<'c, Backend>> + Sync,
{
    async fn call(&self, req: Req<'c, Routed>) -> Exchange {
        let backend = match req.target.rule() {
            Some(rule) => Backend {
                service: rule.pick_backend().clone(),
                retry: rule.retry.clone(),
                avoid: None,
            },
            None => Backend {
                service: req.target.service.clone(),
                retry: None,
                avoid: None,
            },
        };
        let (req, _routed) = req.retarget(backend);
        self.0.call(req).await
    }
}
