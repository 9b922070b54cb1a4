//! Why a mesh handshake failed, in words that say what to check.
//!
//! rustls reports a failed handshake as an alert or a certificate error; an operator needs to
//! know which side is misconfigured and where to look. The inbound proxy answers handshakes it
//! cannot serve with a specific alert ([`refusal_alert`]) so the caller can tell "that proxy is
//! not who discovery says" from "that proxy has no certificate" from "untrusted certificate".

use rustls::{AlertDescription, CertificateError, Error};

/// The bytes of a fatal TLS alert record, sent in plain text before any handshake message:
/// what the inbound proxy answers a ClientHello it will not serve, so the caller's error names
/// the cause instead of an end of file.
pub fn refusal_alert(description: AlertDescription) -> Vec<u8> {
    // Record: type alert (21), legacy version TLS 1.2, length 2; then level fatal (2), description.
    vec![21, 3, 3, 0, 2, 2, u8::from(description)]
}

/// Explains a failed client-side handshake with a peer that had to prove `peer`: what happened,
/// then what to check.
pub fn client_handshake(err: &std::io::Error, peer: &str) -> String {
    let tls = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    match tls {
        Some(Error::AlertReceived(AlertDescription::UnrecognisedName)) => format!(
            "the proxy there does not hold the identity {peer} (it answered unrecognized_name): discovery (or the state file) gives the endpoint an identity its proxy does not have; check the endpoint's identity and the SHOAL_IDENTITY_* settings (identity in /config) of the proxy at that address"
        ),
        Some(Error::AlertReceived(AlertDescription::HandshakeFailure)) => format!(
            "the proxy there refused the handshake for {peer} (handshake_failure): it may have no certificate yet (check its /ready and the identity section of its /config), or share no TLS version with this proxy (SHOAL_TLS_MIN_VERSION)"
        ),
        Some(Error::AlertReceived(alert)) => format!(
            "the peer refused the handshake for {peer} ({alert:?} alert): check that both proxies' certificates come from CAs in each other's trust bundle (identity in /config)"
        ),
        Some(Error::InvalidCertificate(CertificateError::Other(other))) => format!(
            "{other}: the endpoint's identity in discovery (or the state file) and the certificate of the proxy at that address disagree; check both"
        ),
        Some(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => format!(
            "the certificate presented for {peer} does not chain to this proxy's trust bundle: check the trust bundle (identity.roots in /config) on both sides and which CA signed the peer's certificate"
        ),
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => format!(
            "the certificate presented for {peer} has expired: check the renewal of the proxy at that address (identity in its /config)"
        ),
        Some(e) => format!("mTLS handshake with {peer} failed: {e}"),
        None => match err.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => format!(
                "the peer closed the connection during the mTLS handshake for {peer} ({err}): is a Shoal proxy with mTLS (tls_mode not disabled) listening at that address, rather than the app itself?"
            ),
            _ => format!("mTLS handshake with {peer} failed: {err}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn each_cause_names_what_to_check() {
        let peer = "spiffe://cluster.local/ns/default/sa/web";
        let cases = [
            (
                io(Error::AlertReceived(AlertDescription::UnrecognisedName)),
                "does not hold the identity",
            ),
            (
                io(Error::AlertReceived(AlertDescription::HandshakeFailure)),
                "no certificate yet",
            ),
            (
                io(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                "trust bundle",
            ),
            (
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                "closed the connection",
            ),
        ];
        for (err, want) in cases {
            let text = client_handshake(&err, peer);
            assert!(text.contains(want), "{err}: {text}");
            assert!(text.contains(peer), "{err}: {text}");
        }
    }

    #[test]
    fn the_refusal_alert_is_a_fatal_alert_record() {
        assert_eq!(
            refusal_alert(AlertDescription::UnrecognisedName),
            [21, 3, 3, 0, 2, 2, 112]
        );
    }
}
