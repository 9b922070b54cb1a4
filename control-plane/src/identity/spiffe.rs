//! SPIFFE ids: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, the only identity a workload
//! certificate carries, and the trust domain's validation.

use std::fmt;

use crate::model::dns_label;

/// The identity a credential proves and a certificate carries: a namespace and a service account in the
/// CA's trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    /// Kubernetes-style namespace (a DNS label).
    pub namespace: String,
    /// Service account (a DNS label).
    pub service_account: String,
}

impl WorkloadId {
    /// Checks both parts; the error names the field (`namespace` or `service_account`).
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, String> {
        dns_label(namespace).map_err(|reason| format!("namespace {namespace:?} {reason}"))?;
        dns_label(service_account)
            .map_err(|reason| format!("service_account {service_account:?} {reason}"))?;
        Ok(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The workload a SPIFFE id names (`spiffe://<any trust domain>/ns/<namespace>/sa/<service-account>`);
    /// `None` for any other shape.
    pub fn from_spiffe_id(id: &str) -> Option<Self> {
        let (_trust_domain, path) = id.strip_prefix("spiffe://")?.split_once('/')?;
        match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", namespace, "sa", service_account] => Self::new(namespace, service_account).ok(),
            _ => None,
        }
    }

    /// The SPIFFE id of this workload in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            trust_domain.0, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// A SPIFFE trust domain, such as `cluster.local`: lowercase DNS labels separated by dots (the SPIFFE spec's
/// characters, without its `_` which DNS-style names never use here), at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses and checks a trust domain; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 255 {
            return Err("1 to 255 characters, such as cluster.local".to_owned());
        }
        for label in text.split('.') {
            dns_label(label).map_err(|reason| {
                format!(
                    "dot-separated DNS labels, such as cluster.local (label {label:?} {reason})"
                )
            })?;
        }
        Ok(Self(text.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self("cluster.local".to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SPIFFE id in a certificate (DER): its `spiffe://` URI SAN, if it has exactly one (every
/// certificate this CA issues has exactly one).
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Some(uri.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_and_trust_domains() {
        let td = TrustDomain::parse("mesh.example.com").unwrap();
        let id = WorkloadId::new("shop", "web").unwrap();
        assert_eq!(
            id.spiffe_id(&td),
            "spiffe://mesh.example.com/ns/shop/sa/web"
        );
        for bad in ["", "Cluster.local", "a..b", "spiffe://x", "a/b", "-a"] {
            assert!(TrustDomain::parse(bad).is_err(), "{bad:?} accepted");
        }
        let error = WorkloadId::new("shop", "Web").unwrap_err();
        assert!(error.starts_with("service_account \"Web\""), "{error}");
        assert!(
            WorkloadId::new("", "web")
                .unwrap_err()
                .starts_with("namespace")
        );
    }

    #[test]
    fn workloads_read_back_from_spiffe_ids() {
        let id = WorkloadId::new("shop", "web").unwrap();
        let td = TrustDomain::parse("mesh.example.com").unwrap();
        assert_eq!(WorkloadId::from_spiffe_id(&id.spiffe_id(&td)), Some(id));
        for other in [
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "spiffe://cluster.local/sa/web/ns/shop",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local",
            "https://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/Shop/sa/web",
        ] {
            assert_eq!(WorkloadId::from_spiffe_id(other), None, "{other}");
        }
    }
}
