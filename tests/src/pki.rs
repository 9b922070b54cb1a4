//! A throwaway PKI for mTLS tests: a mesh CA, workload certificates with SPIFFE ids, and the
//! broken ones the proxy must refuse (self-signed, expired, wrong identity, other root).
//!
//! ```ignore
//! let ca = TestCa::new("mesh");
//! let web = ca.workload("spiffe://cluster.local/ns/default/sa/web");
//! let files = web.write(&dir, &ca); // SHOAL_IDENTITY_* paths
//! ```
//!
//! For tests that speak mesh TLS themselves (a raw client, a fake peer proxy): [`identity_sni`],
//! [`client_config`] and [`server_config`]; [`presented_chain`] and [`chains_to`] to see which root
//! a server's certificate (the control plane's discovery listener) chains to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};

/// A certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// Paths of a workload's identity files, for `SHOAL_IDENTITY_*`.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
}

impl IdentityFiles {
    /// The proxy settings naming these files.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("SHOAL_IDENTITY_CERT_FILE", self.cert.display().to_string()),
            ("SHOAL_IDENTITY_KEY_FILE", self.key.display().to_string()),
            (
                "SHOAL_IDENTITY_TRUST_BUNDLE_FILE",
                self.trust_bundle.display().to_string(),
            ),
        ]
    }
}

/// The validity of a certificate.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// Valid now (and for years).
    Current,
    /// Expired in 2021.
    Expired,
    /// Valid now, until January 1st of the given year (distinct expiries tell renewed
    /// certificates apart, e.g. in `/config`).
    Until(i32),
}

impl TestCa {
    /// A self-signed root named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key pair");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed root");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root's private key, PKCS#8 PEM (for a control plane run under this root:
    /// `SHOAL_CP_CA_KEY_FILE`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a CSR (DER) for `spiffe_id`, valid for `lifetime` from now, as a control plane's CA
    /// would (only the CSR's public key is used). Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        lifetime: std::time::Duration,
    ) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .expect("a valid CSR");
        let mut params = leaf_params(spiffe_id, Validity::Current);
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
        params
            .signed_by(&csr.public_key, &self.issuer)
            .expect("signed leaf")
            .pem()
    }

    /// A workload certificate for `spiffe_id`, valid now.
    pub fn workload(&self, spiffe_id: &str) -> Leaf {
        self.issue(spiffe_id, Validity::Current)
    }

    /// A workload certificate for `spiffe_id` with the given validity.
    pub fn issue(&self, spiffe_id: &str, validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("key pair");
        let params = leaf_params(spiffe_id, validity);
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestCa {
    /// A certificate signed by this CA that carries no SPIFFE id: its only SAN is the DNS name
    /// `dns` (an ordinary web certificate from a trusted issuer).
    pub fn issue_without_spiffe(&self, dns: &str) -> Leaf {
        let key = KeyPair::generate().expect("key pair");
        let mut params = leaf_params("", Validity::Current);
        params.distinguished_name.push(DnType::CommonName, dns);
        params.subject_alt_names = vec![SanType::DnsName(dns.try_into().expect("DNS SAN"))];
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestCa {
    /// A server certificate signed by this CA for the IP address `ip` (its only SAN), such as a fake
    /// API server on 127.0.0.1.
    pub fn issue_for_ip(&self, ip: std::net::IpAddr) -> Leaf {
        let key = KeyPair::generate().expect("key pair");
        let mut params = leaf_params("", Validity::Current);
        params
            .distinguished_name
            .push(DnType::CommonName, ip.to_string());
        params.subject_alt_names = vec![SanType::IpAddress(ip)];
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn leaf_params(spiffe_id: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    // The subject names the identity so `openssl s_client` output shows whose leaf it is.
    if !spiffe_id.is_empty() {
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id);
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().expect("URI SAN")));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    match validity {
        Validity::Current => {}
        Validity::Expired => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Validity::Until(year) => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
    }
    params
}

impl Leaf {
    /// A self-signed certificate for `spiffe_id` (no CA vouches for it).
    pub fn self_signed(spiffe_id: &str) -> Self {
        let key = KeyPair::generate().expect("key pair");
        let cert = leaf_params(spiffe_id, Validity::Current)
            .self_signed(&key)
            .expect("self-signed leaf");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The certificate chain, DER (leaf first).
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM certificate chain")
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("PEM private key")
    }

    /// Writes only the certificate and key files of `files` (a renewal: the bundle stays).
    pub fn overwrite(&self, files: &IdentityFiles) {
        write_atomically(&files.key, &self.key_pem);
        write_atomically(&files.cert, &self.cert_pem);
    }

    /// Writes the certificate, key and `bundle` (root PEMs) into `dir` under `name`.
    pub fn write(&self, dir: &Path, name: &str, bundle: &[&str]) -> IdentityFiles {
        let files = IdentityFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            trust_bundle: dir.join(format!("{name}-bundle.pem")),
        };
        std::fs::write(&files.cert, &self.cert_pem).expect("write cert");
        std::fs::write(&files.key, &self.key_pem).expect("write key");
        std::fs::write(&files.trust_bundle, bundle.concat()).expect("write bundle");
        files
    }
}

/// Replaces `path` with `text` in one rename, so a reader never sees a half-written file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// The TLS server name that asks an inbound proxy for `spiffe_id`
/// (`spiffe://td/ns/N/sa/S` → `S.N.serviceaccount.identity.shoal.td`, as the proxy's
/// `tls::spiffe` names it).
pub fn identity_sni(spiffe_id: &str) -> String {
    let rest = spiffe_id.strip_prefix("spiffe://").expect("a spiffe:// id");
    let parts: Vec<&str> = rest.split('/').collect();
    let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
        panic!("{spiffe_id} is not spiffe://<td>/ns/<ns>/sa/<sa>")
    };
    format!("{sa}.{ns}.serviceaccount.identity.shoal.{td}")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(roots_pem: &[&str]) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    for pem in roots_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.expect("PEM root")).expect("usable root");
        }
    }
    Arc::new(store)
}

/// TLS 1.3 only, or TLS 1.2 only.
fn versions(tls12: bool) -> &'static [&'static SupportedProtocolVersion] {
    static TLS12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if tls12 { &TLS12 } else { &TLS13 }
}

/// A TLS client configuration for speaking mesh TLS to a proxy by hand: it offers ALPN `alpn`,
/// presents `client` (or no certificate), and accepts the server only if its chain leads to
/// one of `roots_pem` and its leaf is exactly `server`'s (a name check would not do: mesh
/// certificates carry a SPIFFE URI, not a DNS name). TLS 1.3 unless `tls12`.
pub fn client_config(
    client: Option<&Leaf>,
    roots_pem: &[&str],
    server: &Leaf,
    alpn: &[u8],
    tls12: bool,
) -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(ServerCheck {
        roots: Some(root_store(roots_pem)),
        leaf: Some(server.chain_der().remove(0)),
        seen: None,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls12))
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain_der(), leaf.key_der())
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS server configuration for a fake peer proxy: presents `leaf`, requires a client
/// certificate chaining to one of `roots_pem`, and offers the mesh ALPN protocols.
pub fn server_config(leaf: &Leaf, roots_pem: &[&str]) -> Arc<ServerConfig> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(roots_pem), provider.clone())
            .build()
            .expect("client verifier");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain_der(), leaf.key_der())
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"shoal.tcp".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` (ALPN `h2`) presenting `client`, accepting a server whose chain leads
/// to one of `roots_pem` whatever its name: a raw client of the control plane's discovery listener.
pub async fn connect_presenting(
    addr: std::net::SocketAddr,
    client: &Leaf,
    roots_pem: &[&str],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = provider();
    let verifier = Arc::new(ServerCheck {
        roots: Some(root_store(roots_pem)),
        leaf: None,
        seen: None,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(client.chain_der(), client.key_der())
        .expect("client certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("control-plane.test").expect("a DNS server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// A test client's check of the server certificate: it must chain to `roots` and (when `leaf` is
/// set) be exactly that one; with no `roots` anything is accepted. `seen`, when set, records the
/// presented chain (leaf first).
#[derive(Debug)]
struct ServerCheck {
    roots: Option<Arc<RootCertStore>>,
    leaf: Option<CertificateDer<'static>>,
    seen: Option<Arc<std::sync::Mutex<Vec<CertificateDer<'static>>>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(seen) = &self.seen {
            let mut chain = vec![end_entity.clone().into_owned()];
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
            *seen.lock().expect("capture lock") = chain;
        }
        if let Some(roots) = &self.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &ParsedCertificate::try_from(end_entity)?,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        if self
            .leaf
            .as_ref()
            .is_some_and(|leaf| end_entity.as_ref() != leaf.as_ref())
        {
            return Err(rustls::Error::General(
                "the server presented another certificate than the expected one".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificate chain a TLS server at `addr` presents for the server name `sni` (nothing is
/// verified: the caller checks the chain with [`chains_to`]). The handshake offers ALPN `h2`.
pub async fn presented_chain(
    addr: std::net::SocketAddr,
    sni: &str,
) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCheck {
            roots: None,
            leaf: None,
            seen: Some(seen.clone()),
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("a DNS server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let chain = seen.lock().expect("capture lock").clone();
    Ok(chain)
}

/// Whether `chain` (leaf first) leads to one of `roots_pem`, as a TLS client would check it.
pub fn chains_to(chain: &[CertificateDer<'static>], roots_pem: &[&str]) -> bool {
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok(parsed) = ParsedCertificate::try_from(leaf) else {
        return false;
    };
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &root_store(roots_pem),
        &chain[1..],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
    .is_ok()
}
