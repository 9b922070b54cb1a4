//! The split stage: a route rule's weighted pick of the backend service (a traffic shift); a
//! request that matched no rule goes to the service it named.

use std::sync::Arc;

use super::route::Routed;
use crate::http::stack::{Exchange, Layer, Req, Service};
use crate::state::Service as MeshService;

/// The layer (the weights are the route rule's).
#[derive(Debug, Clone, Copy)]
pub(super) struct SplitLayer;

/// The stage.
#[derive(Debug)]
pub(super) struct Split<S>(S);

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;

    fn layer(&self, inner: S) -> Split<S> {
        Split(inner)
    }
}

impl<'c, S> Service<Req<'c, Routed>> for Split<S>
where
    S: Service<Req<'c, Arc<MeshService>>> + Sync,
{
    async fn call(&self, req: Req<'c, Routed>) -> Exchange {
        let backend = match req.target.rule() {
            Some(rule) => rule.pick_backend().clone(),
            None => req.target.service.clone(),
        };
        let (req, _routed) = req.retarget(backend);
        self.0.call(req).await
    }
}
