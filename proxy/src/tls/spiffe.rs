//! SPIFFE ids (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), the TLS server
//! name that carries one, and reading one out of a certificate.
//!
//! A mesh connection names the identity the client expects in its SNI, as a DNS name
//! (`<sa>.<ns>.serviceaccount.identity.shoal.<trust-domain>`, the scheme Linkerd uses): SNI
//! cannot hold a URI, and a DNS name lets the inbound proxy tell a mesh handshake meant for it
//! from the application's own TLS, which it passes through untouched.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// The label between a SNI's identity part and its trust domain.
const SNI_MARKER: &str = ".serviceaccount.identity.shoal.";

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte offsets into `uri` of the namespace and service account.
    ns: (usize, usize),
    sa: (usize, usize),
    td_end: usize,
}

impl SpiffeId {
    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`; the error says
    /// what is wrong.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("`{uri}` is not a SPIFFE id (expected spiffe://...)"))?;
        let bad = || {
            format!(
                "`{uri}` is not a workload SPIFFE id (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
            )
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(bad());
        };
        if !is_dns_name(td) || !is_label(ns) || !is_label(sa) {
            return Err(bad());
        }
        let td_end = "spiffe://".len() + td.len();
        let ns_start = td_end + "/ns/".len();
        let sa_start = ns_start + ns.len() + "/sa/".len();
        Ok(Self {
            uri: uri.into(),
            ns: (ns_start, ns_start + ns.len()),
            sa: (sa_start, sa_start + sa.len()),
            td_end,
        })
    }

    /// The identity of `service_account` in `namespace` of `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, String> {
        Self::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.td_end]
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.ns.0..self.ns.1]
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.sa.0..self.sa.1]
    }

    /// The TLS server name a client uses to reach this identity.
    pub fn server_name(&self) -> ServerName<'static> {
        let name = format!(
            "{}.{}{SNI_MARKER}{}",
            self.service_account(),
            self.namespace(),
            self.trust_domain()
        );
        // Labels and trust domain were checked at parse time, so this is a valid DNS name.
        ServerName::DnsName(DnsName::try_from(name).expect("identity SNI is a DNS name"))
    }

    /// The identity a mesh SNI names; `None` for any other server name.
    pub fn from_server_name(name: &str) -> Option<Self> {
        let (who, td) = name.split_once(SNI_MARKER)?;
        let (sa, ns) = who.split_once('.')?;
        Self::new(td, ns, sa).ok()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// A DNS label: a-z, 0-9 and '-', not at either end, at most 63 bytes.
pub(crate) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// The workload identity a certificate carries: its one `spiffe://` URI SAN. A certificate with
/// none, or with several, has no usable identity.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?
        .ok_or("the certificate has no subjectAltName (a mesh certificate carries a SPIFFE URI)")?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => SpiffeId::parse(uri),
        (None, _) => Err("the certificate has no spiffe:// URI SAN".into()),
        (Some(_), Some(_)) => Err("the certificate has several spiffe:// URI SANs".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_maps_to_sni_and_back() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "web");
        let ServerName::DnsName(name) = id.server_name() else {
            panic!("not a DNS name")
        };
        assert_eq!(
            name.as_ref(),
            "web.shop.serviceaccount.identity.shoal.cluster.local"
        );
        assert_eq!(SpiffeId::from_server_name(name.as_ref()), Some(id));
        assert_eq!(SpiffeId::from_server_name("example.com"), None);
    }

    #[test]
    fn rejects_what_is_not_a_workload_id() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe:///ns/a/sa/b",
            "spiffe://bad_domain/ns/a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn reads_the_uri_san_of_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let id = identity_of(cert.der()).unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/a/sa/b");

        let mut params = rcgen::CertificateParams::new(vec!["example.com".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "https://example.com/x".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        assert!(identity_of(cert.der()).unwrap_err().contains("no spiffe"));
    }
}
