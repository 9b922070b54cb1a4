//! The filter stage: a route rule's filters (Gateway API's `HTTPRoute` filters). A rule with a
//! redirect is answered here by the proxy itself — its status and `Location`, nothing sent
//! upstream, no `shoal-proxy-error` (it is an answer, not a failure); otherwise the rule's request
//! header edits are made once, before the split, the retries and the send below, and its response
//! header edits are made to the upstream's response on the way back (not to the proxy's own error
//! answers). A request whose rule has no filters costs three branches.

use http::Response;
use http::header::LOCATION;

use super::route::Routed;
use crate::http::body::ResponseBody;
use crate::http::stack::{Exchange, Req, Service, stage};

stage! {
    /// The stage.
    pub(super) Filter, FilterLayer
}

impl<'c, S> Service<Req<'c, Routed>> for Filter<S>
where
    S: Service<Req<'c, Routed>> + Sync,
{
    async fn call(&self, mut req: Req<'c, Routed>) -> Exchange {
        let Some(rule) = req.target.rule() else {
            return self.0.call(req).await;
        };
        if let Some(redirect) = &rule.redirect {
            let location = redirect.location(&req.http, &rule.matches);
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = redirect.status();
            if let Ok(value) = http::HeaderValue::try_from(location) {
                resp.headers_mut().insert(LOCATION, value);
            }
            if let Some(edits) = &rule.response_headers {
                edits.apply(resp.headers_mut());
            }
            // Counted under the rule (its one backend is the parent service: nothing is sent).
            let metrics = rule.backends.first().map(|b| b.metrics.clone());
            return Exchange {
                result: Ok(resp),
                metrics,
                upstream: None,
                retried: Vec::new(),
            };
        }
        let response_edits = rule.response_headers.clone();
        if let Some(edits) = &rule.request_headers {
            // Disjoint fields: the rule borrows the target, the edits change the request.
            edits.apply(req.http.headers_mut());
        }
        let mut exchange = self.0.call(req).await;
        if let (Some(edits), Ok(resp)) = (response_edits, &mut exchange.result) {
            edits.apply(resp.headers_mut());
        }
        exchange
    }
}
