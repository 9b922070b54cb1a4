//! Hop-by-hop header handling (RFC 9110 §7.6.1) and request-target normalisation.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: `Connection` and every field it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding` (re-framed by this hop), `TE` other than `trailers`
/// (which gRPC needs end to end), and `Upgrade` unless the request is an upgrade we carry.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The common case has none of them: one pass over the (few) names is cheaper than a hash
    // lookup per hop-by-hop field, on every request and every response.
    let any = headers.keys().any(|k| {
        k == header::CONNECTION
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
            || k == header::TRANSFER_ENCODING
            || k == header::TE
            || k == header::UPGRADE
    });
    if !any && !keep_upgrade {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Fields named by Connection (on any of its lines) are hop-by-hop too.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(str::trim)
            // TE is handled below (`te: trailers` survives); an upgrade keeps its Upgrade field.
            .filter(|n| {
                !(n.eq_ignore_ascii_case("te") || keep_upgrade && n.eq_ignore_ascii_case("upgrade"))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if headers.contains_key(&KEEP_ALIVE) {
        headers.remove(&KEEP_ALIVE);
    }
    if headers.contains_key(&PROXY_CONNECTION) {
        headers.remove(&PROXY_CONNECTION);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if headers.contains_key(header::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (e.g. WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Whether a request is a gRPC call: content-type `application/grpc`, or `application/grpc+<codec>`
/// (`+proto`, `+json`, …) or with parameters (`;`), as the gRPC protocol defines it. The proxy
/// answers those itself with a gRPC status (trailers-only) instead of an HTTP error status. The
/// HTTP version is not checked: gRPC is HTTP/2 by definition, and a call between proxies always
/// rides HTTP/2 anyway. gRPC-Web (`application/grpc-web…`) is not gRPC on the wire: its clients
/// read HTTP statuses, so it gets the HTTP answer.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
    })
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header's.
pub(crate) fn authority_of<B>(req: &http::Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
}

/// A copy of a request head, to send again.
pub(crate) fn copy_head(head: &http::Request<()>) -> http::Request<()> {
    let mut copy = http::Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    // Extended CONNECT's `:protocol` travels as an extension.
    if let Some(p) = head.extensions().get::<h2::ext::Protocol>() {
        copy.extensions_mut().insert(p.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed_fields() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        h.insert("host", "a.example".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["host"], "a.example");
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let grpc = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_grpc(&h)
        };
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(grpc(ct), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "text/plain",
        ] {
            assert!(!grpc(ct), "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_kept_only_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut kept, true);
        assert_eq!(kept["upgrade"], "websocket");
        assert_eq!(kept["connection"], "upgrade");
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("upgrade").is_none());
    }

    #[test]
    fn upgrade_without_connection_is_stripped_and_end_to_end_fields_kept() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-a", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("upgrade").is_none());
        assert_eq!(h["x-a"], "1");

        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
    }

    /// Property test (proptest): whatever fields and `Connection` lists a message carries, no
    /// hop-by-hop field survives the hop and every end-to-end field does (the header conversion
    /// every request and response goes through, HTTP/1.1 and HTTP/2 alike).
    mod props {
        use proptest::prelude::*;

        use super::*;

        const NAMES: &[&str] = &[
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "upgrade",
            "host",
            "content-length",
            "x-a",
            "x-b",
            "shoal-client-id",
        ];
        const HOP: &[&str] = &[
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ];

        fn fields() -> impl Strategy<Value = Vec<(&'static str, String)>> {
            let value = prop_oneof![
                prop::sample::subsequence(NAMES, 0..4).prop_map(|n| n.join(", ")),
                prop::sample::select(&["trailers", "chunked", "websocket", "Upgrade", "x"][..])
                    .prop_map(str::to_string),
            ];
            prop::collection::vec((prop::sample::select(NAMES), value), 0..10)
        }

        proptest! {
            #[test]
            fn no_hop_by_hop_field_survives_and_end_to_end_fields_do(
                fields in fields(),
                keep_upgrade in any::<bool>(),
            ) {
                let mut h = HeaderMap::new();
                for (name, value) in &fields {
                    h.append(*name, HeaderValue::from_str(value).unwrap());
                }
                let listed: Vec<String> = h
                    .get_all(header::CONNECTION)
                    .iter()
                    .flat_map(|v| v.to_str().unwrap().split(',').map(|t| t.trim().to_ascii_lowercase()))
                    .collect();
                let before = h.clone();
                strip_hop_by_hop(&mut h, keep_upgrade);
                for name in h.keys() {
                    let n = name.as_str();
                    let upgrade_kept = keep_upgrade && (n == "upgrade" || n == "connection");
                    prop_assert!(!HOP.contains(&n) || upgrade_kept, "{n} survived: {h:?}");
                    prop_assert!(
                        !listed.iter().any(|l| l == n) || n == "te" || upgrade_kept,
                        "{n} was listed in Connection: {h:?}"
                    );
                }
                if let Some(te) = h.get(header::TE) {
                    prop_assert_eq!(te, "trailers");
                }
                for (name, value) in &before {
                    let n = name.as_str();
                    let end_to_end = !HOP.contains(&n) && n != "te" && !listed.iter().any(|l| l == n);
                    if end_to_end {
                        prop_assert!(h.get_all(name).iter().any(|v| v == value), "{n} was lost");
                    }
                }
            }
        }
    }
}
