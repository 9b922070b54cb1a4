//! Identity and mTLS settings: where the certificate comes from, the lowest TLS version, and
//! the inbound mTLS mode used when the state does not set one.

use std::path::PathBuf;

use super::env;
use super::parse::{ConfigError, Reader};
use crate::identity::{IdentityConfig, Source, Token};
use crate::tls::{MinVersion, TlsMode};

/// Reads the identity settings; `None` when none is set (no mesh identity: plain text only).
pub(super) fn identity(
    r: &Reader<'_>,
    discovery_addr: Option<&str>,
    namespace: &str,
    service_account: &str,
) -> Result<Option<IdentityConfig>, ConfigError> {
    // Validated even without an identity, so a typo is caught before it matters.
    let min_version = min_version(r)?;
    let files = [
        env::IDENTITY_CERT_FILE,
        env::IDENTITY_KEY_FILE,
        env::IDENTITY_TRUST_BUNDLE_FILE,
    ]
    .map(|name| (name, r.opt_string(name)));
    let token = match (
        r.opt_string(env::IDENTITY_TOKEN),
        r.opt_string(env::IDENTITY_TOKEN_FILE),
    ) {
        (Some(_), Some(f)) => {
            return Err(r.invalid(
                env::IDENTITY_TOKEN_FILE,
                &f,
                &format!(
                    "either {} or {}, not both",
                    env::IDENTITY_TOKEN,
                    env::IDENTITY_TOKEN_FILE
                ),
            ));
        }
        (Some(t), None) => match r.string(env::IDENTITY_TOKEN_KIND, "join").as_str() {
            "join" => Some(Token::Join(t)),
            "kubernetes" => {
                return Err(r.invalid(
                    env::IDENTITY_TOKEN_KIND,
                    "kubernetes",
                    &format!(
                        "`join` with {} (a Kubernetes token comes from {})",
                        env::IDENTITY_TOKEN,
                        env::IDENTITY_TOKEN_FILE
                    ),
                ));
            }
            other => {
                return Err(r.invalid(env::IDENTITY_TOKEN_KIND, other, "`join` or `kubernetes`"));
            }
        },
        (None, Some(f)) => match r.string(env::IDENTITY_TOKEN_KIND, "join").as_str() {
            "join" => Some(Token::JoinFile(PathBuf::from(f))),
            "kubernetes" => Some(Token::KubernetesFile(PathBuf::from(f))),
            other => {
                return Err(r.invalid(env::IDENTITY_TOKEN_KIND, other, "`join` or `kubernetes`"));
            }
        },
        (None, None) => None,
    };
    let given = files.iter().filter(|(_, v)| v.is_some()).count();
    let source = match (given, token) {
        (0, None) => return Ok(None),
        (0, Some(token)) => {
            let addr = match r.opt_string(env::IDENTITY_ADDR) {
                Some(raw) => super::control_plane_url(r, env::IDENTITY_ADDR, &raw)?,
                None => discovery_addr.map(str::to_string).ok_or_else(|| {
                    r.invalid(
                        env::IDENTITY_ADDR,
                        "",
                        &format!(
                            "the control plane's address (or {}) to redeem the identity token at",
                            env::DISCOVERY_ADDR
                        ),
                    )
                })?,
            };
            Source::ControlPlane { addr, token }
        }
        (3, None) => {
            let [cert, key, bundle] = files.map(|(_, v)| PathBuf::from(v.unwrap_or_default()));
            Source::Files {
                cert,
                key,
                trust_bundle: bundle,
            }
        }
        (3, Some(_)) => {
            return Err(r.invalid(
                env::IDENTITY_CERT_FILE,
                files[0].1.as_deref().unwrap_or_default(),
                &format!(
                    "either certificate files or {} / {}, not both",
                    env::IDENTITY_TOKEN,
                    env::IDENTITY_TOKEN_FILE
                ),
            ));
        }
        _ => {
            let (missing, _) = files
                .iter()
                .find(|(_, v)| v.is_none())
                .expect("one is missing");
            let (set, value) = files.iter().find(|(_, v)| v.is_some()).expect("one is set");
            return Err(r.invalid(
                set,
                value.as_deref().unwrap_or_default(),
                &format!(
                    "{} too: {}, {} and {} go together",
                    missing,
                    env::IDENTITY_CERT_FILE,
                    env::IDENTITY_KEY_FILE,
                    env::IDENTITY_TRUST_BUNDLE_FILE
                ),
            ));
        }
    };
    Ok(Some(IdentityConfig {
        source,
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        min_version,
    }))
}

fn min_version(r: &Reader<'_>) -> Result<MinVersion, ConfigError> {
    match r.string(env::TLS_MIN_VERSION, "1.3").as_str() {
        "1.3" => Ok(MinVersion::Tls13),
        "1.2" => Ok(MinVersion::Tls12),
        other => Err(r.invalid(
            env::TLS_MIN_VERSION,
            other,
            "`1.2` or `1.3` (older versions are not supported)",
        )),
    }
}

/// `SHOAL_INBOUND_TLS_MODE`: the inbound mTLS mode when the state sets none for the port.
pub(super) fn inbound_tls_mode(r: &Reader<'_>) -> Result<TlsMode, ConfigError> {
    match r.string(env::INBOUND_TLS_MODE, "permissive").as_str() {
        "strict" => Ok(TlsMode::Strict),
        "permissive" => Ok(TlsMode::Permissive),
        "disabled" => Ok(TlsMode::Disabled),
        other => Err(r.invalid(
            env::INBOUND_TLS_MODE,
            other,
            "`strict`, `permissive` or `disabled`",
        )),
    }
}
