//! Control-plane channel settings: the address form (TLS or plaintext) and, for TLS, the trust anchors
//! and the identity the control plane must prove.

use std::path::PathBuf;

use super::env;
use super::parse::{ConfigError, Reader};
use crate::control_plane::{DEFAULT_IDENTITY, TlsSettings, read_anchors};
use crate::tls::SpiffeId;

/// `HOST:PORT` or `https://HOST:PORT` (TLS), or `http://HOST:PORT` (plaintext h2c), as a URL.
pub(super) fn url(r: &Reader<'_>, setting: &str, raw: &str) -> Result<String, ConfigError> {
    let addr = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let valid = addr.parse::<http::Uri>().ok().filter(|u| {
        matches!(u.scheme_str(), Some("https" | "http"))
            && u.authority().is_some_and(|a| a.port_u16().is_some())
            && u.path().trim_start_matches('/').is_empty()
    });
    if valid.is_none() {
        return Err(r.invalid(
            setting,
            raw,
            "HOST:PORT or https://HOST:PORT of the control plane (TLS), or http://HOST:PORT (plaintext, only if the control plane allows it)",
        ));
    }
    Ok(addr)
}

/// The TLS settings, required when any of `addrs` (setting, URL) uses TLS; read (and checked) whenever
/// the anchors file is set.
pub(super) fn tls(
    r: &Reader<'_>,
    addrs: &[(&str, &str)],
) -> Result<Option<TlsSettings>, ConfigError> {
    let needed_by = addrs.iter().find(|(_, url)| url.starts_with("https://"));
    let file = match (
        r.opt_string(env::CONTROL_PLANE_TRUST_ANCHORS_FILE),
        needed_by,
    ) {
        (Some(file), _) => file,
        (None, None) => return Ok(None),
        (None, Some((setting, url))) => {
            return Err(r.invalid(
                env::CONTROL_PLANE_TRUST_ANCHORS_FILE,
                "",
                &format!(
                    "a PEM file of the control plane's trust anchors, required because {setting}={url} uses TLS (`shoalctl ca anchors` prints them; the control plane writes them to $SHOAL_CP_DATA_DIR/trust-anchors.pem)"
                ),
            ));
        }
    };
    let anchors = read_anchors(std::path::Path::new(&file)).map_err(|problem| {
        r.invalid(
            env::CONTROL_PLANE_TRUST_ANCHORS_FILE,
            &file,
            &format!("a readable PEM file of root certificates ({problem})"),
        )
    })?;
    let raw = r.string(env::CONTROL_PLANE_IDENTITY, DEFAULT_IDENTITY);
    let identity = SpiffeId::parse(&raw).map_err(|problem| {
        r.invalid(
            env::CONTROL_PLANE_IDENTITY,
            &raw,
            &format!(
                "the control plane's SPIFFE id, spiffe://<trust-domain>/ns/<namespace>/sa/shoal-control-plane ({problem})"
            ),
        )
    })?;
    Ok(Some(TlsSettings {
        anchors_file: PathBuf::from(file),
        anchors,
        identity,
    }))
}
