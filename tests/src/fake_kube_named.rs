//! The fake API server's namespaced objects read and written one at a time: Leases, Secrets and ConfigMaps, with
//! optimistic concurrency (`409 Conflict`) and JSON merge patches, as the control plane's HA code uses them.

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Body, Server, json_response, merge, status};

impl Server {
    /// Leases, Secrets and ConfigMaps: `GET`/`PUT`/`PATCH` `{ns}/{resource}/{name}`, `POST` `{ns}/{resource}`. A
    /// `PUT` carrying a `metadata.resourceVersion` must carry the current one and a `POST` must name a new object
    /// (`409 Conflict` otherwise), as optimistic concurrency on the real API server; a `PATCH` is a JSON merge
    /// patch (no version needed).
    pub(super) async fn named(
        &self,
        req: Request<Incoming>,
        resource: &'static str,
        namespace: String,
        name: Option<String>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let merge_patch = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/merge-patch+json");
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body"),
        };
        let mut state = self.state.lock().unwrap();
        *state.named_requests.entry(resource).or_default() += 1;
        if state.failing.contains(&resource) {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the fake fails this resource",
            );
        }
        let not_found = format!("{resource} not found");
        match (method, name) {
            (http::Method::GET, Some(name)) => {
                match state.named.get(&(resource, namespace, name)) {
                    Some(object) => json_response(StatusCode::OK, object),
                    None => status(StatusCode::NOT_FOUND, &not_found),
                }
            }
            (http::Method::PATCH, Some(name)) => {
                if !merge_patch {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "the fake takes merge patches only",
                    );
                }
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return status(StatusCode::BAD_REQUEST, "the body is not JSON");
                };
                state.version += 1;
                let version = state.version;
                let Some(object) = state.named.get_mut(&(resource, namespace, name)) else {
                    return status(StatusCode::NOT_FOUND, &not_found);
                };
                merge(object, &patch);
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                json_response(StatusCode::OK, object)
            }
            (method @ (http::Method::POST | http::Method::PUT), name) => {
                let creating = method == http::Method::POST;
                if creating != name.is_none() {
                    return status(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "POST the collection, PUT an object",
                    );
                }
                let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                    return status(StatusCode::BAD_REQUEST, "the body is not JSON");
                };
                let Some(object_name) = object["metadata"]["name"].as_str().map(str::to_owned)
                else {
                    return status(StatusCode::BAD_REQUEST, "metadata.name is required");
                };
                let key = (resource, namespace.clone(), object_name);
                let current = state.named.get(&key).map(|l| {
                    l["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                });
                let conflict = match (&current, creating) {
                    (Some(_), true) => true,
                    (None, false) => return status(StatusCode::NOT_FOUND, &not_found),
                    (Some(current), false) => object["metadata"]["resourceVersion"]
                        .as_str()
                        .is_some_and(|v| v != current),
                    (None, true) => false,
                };
                if conflict {
                    *state.conflicts.entry(resource).or_default() += 1;
                    return status(
                        StatusCode::CONFLICT,
                        &format!(
                            "Operation cannot be fulfilled on {resource}: the object has been modified"
                        ),
                    );
                }
                state.version += 1;
                object["metadata"]["namespace"] = json!(namespace);
                object["metadata"]["resourceVersion"] = json!(state.version.to_string());
                state.named.insert(key, object.clone());
                let code = if creating {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json_response(code, &object)
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "Leases, Secrets, ConfigMaps: GET, POST, PUT, PATCH",
            ),
        }
    }
}

/// The namespaced resources served one object at a time: resource, and the group path its
/// `/namespaces/{ns}/{resource}` hangs under.
const NAMED: [(&str, &str); 3] = [
    ("leases", "/apis/coordination.k8s.io/v1"),
    ("secrets", "/api/v1"),
    ("configmaps", "/api/v1"),
];

pub(super) fn named_resource(resource: &str) -> Option<&'static str> {
    NAMED.iter().find(|(r, _)| *r == resource).map(|(r, _)| *r)
}

/// `<group>/namespaces/{ns}/{resource}[/{name}]` of [`NAMED`]: the resource, namespace and name.
pub(super) fn named_path(path: &str) -> Option<(&'static str, String, Option<String>)> {
    NAMED.iter().find_map(|(resource, group)| {
        let rest = path.strip_prefix(group)?.strip_prefix("/namespaces/")?;
        let mut parts = rest.split('/');
        let namespace = parts.next()?;
        if parts.next()? != *resource {
            return None;
        }
        let name = parts.next().map(str::to_owned);
        if parts.next().is_some() {
            return None;
        }
        Some((*resource, namespace.to_owned(), name))
    })
}
