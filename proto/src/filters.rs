//! The bounds of a route rule's filters (header edits and redirects), one list for the control plane
//! (which refuses at `apply`) and the proxy (which re-checks what it is pushed), as for
//! [`crate::authority`].

/// Most edits in one header modifier (set + add + remove).
pub const MAX_HEADER_EDITS: usize = 64;

/// The statuses a redirect may answer with (the Gateway API's set, plus 303).
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Headers no rule may edit: hop-by-hop fields (they belong to one connection, and the proxy strips
/// them anyway), the framing and the authority the request was already routed by.
const PROTECTED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "proxy-authorization",
];

/// Why a header `name` (any case) cannot be edited by a route, if it cannot.
pub fn protected_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("shoal-") {
        return Some("is one of the mesh's own `shoal-*` headers, which the proxies set and strip");
    }
    PROTECTED
        .contains(&lower.as_str())
        .then_some("is a hop-by-hop, framing or routing header, which a route cannot edit")
}
