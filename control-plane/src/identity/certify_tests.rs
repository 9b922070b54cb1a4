//! A certificate granted on a Kubernetes token is marked, keeps its mark through renewals, and is renewed with
//! the certificate alone only while the API server cannot review tokens; other certificates renew as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::*;
use crate::identity::ca::{CaSettings, KUBERNETES_MARK};
use crate::identity::clock::ManualClock;
use crate::identity::spiffe::TrustDomain;
use crate::store::Store;

/// Grants `shop/web` on any credential; a Kubernetes one says whether the API server is away.
struct Verifier {
    kubernetes: bool,
    unavailable: AtomicBool,
}

#[tonic::async_trait]
impl CredentialVerifier for Verifier {
    async fn verify(
        &self,
        _credential: &str,
        requested: &WorkloadId,
    ) -> Result<Granted, super::super::credentials::Refusal> {
        Ok(Granted {
            kubernetes: self.kubernetes,
            ..Granted::identity(requested.clone())
        })
    }

    fn unavailable_lately(&self) -> bool {
        self.unavailable.load(Ordering::Relaxed)
    }
}

struct Fixture {
    service: CertifyService,
    tokens: Arc<Verifier>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// The chain `request` is granted; panics on a refusal.
    async fn granted(&self, request: v1::CertifyRequest) -> Vec<String> {
        match self.service.certify(request).await {
            Ok(answer) => answer.certificate_chain_pem,
            Err(refused) => panic!("refused: {}", refused.status.message()),
        }
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    let settings = CaSettings {
        trust_domain: TrustDomain::parse("cluster.local").unwrap(),
        cert_ttl: Duration::from_secs(3600),
        root: None,
        propagation_timeout: Duration::from_secs(60),
    };
    let ca = Ca::load_or_create(store, settings, Arc::new(ManualClock::starting_now())).unwrap();
    let join = Arc::new(Verifier {
        kubernetes: false,
        unavailable: AtomicBool::new(false),
    });
    let tokens = Arc::new(Verifier {
        kubernetes: true,
        unavailable: AtomicBool::new(false),
    });
    Fixture {
        service: CertifyService::new(Arc::new(ca), join, Some(tokens.clone())),
        tokens,
        _dir: dir,
    }
}

/// A fresh key and a request for `shop/web` with its CSR and the `credential` made for that CSR's DER.
fn request(
    credential: impl FnOnce(&[u8]) -> v1::certify_request::Credential,
) -> (KeyPair, v1::CertifyRequest) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let der = csr.der().to_vec();
    let request = v1::CertifyRequest {
        credential: Some(credential(&der)),
        csr: Some(v1::certify_request::Csr::CsrDer(der)),
        namespace: "shop".into(),
        service_account: "web".into(),
    };
    (key, request)
}

/// A renewal of `chain` (whose key is `key`) for the CSR `csr_der`.
fn renewal(chain: &[String], key: &KeyPair, csr_der: &[u8]) -> v1::certify_request::Credential {
    let rng = SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng)
            .unwrap();
    v1::certify_request::Credential::Renewal(v1::Renewal {
        certificate_chain_pem: chain.to_vec(),
        csr_signature: pair.sign(&rng, csr_der).unwrap().as_ref().to_vec(),
    })
}

/// Whether the leaf of `chain` carries the Kubernetes mark.
fn marked(chain: &[String]) -> bool {
    let der = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.subject()
        .iter_organizational_unit()
        .any(|ou| ou.as_str() == Ok(KUBERNETES_MARK))
}

#[tokio::test]
async fn a_kubernetes_certificate_renews_with_itself_only_while_the_api_server_is_away() {
    let f = fixture();
    let (key, first) =
        request(|_| v1::certify_request::Credential::KubernetesServiceAccountToken("jwt".into()));
    let chain = f.granted(first).await;
    assert!(marked(&chain), "granted on a Kubernetes token: marked");

    // The API server answers reviews: the certificate alone does not renew it.
    let (_, renew) = request(|csr| renewal(&chain, &key, csr));
    let refused = f.service.certify(renew).await.err().unwrap();
    assert_eq!(refused.reason, "token_required");
    assert_eq!(refused.status.code(), tonic::Code::Unauthenticated);
    assert!(
        refused
            .status
            .message()
            .contains("renew with kubernetes_service_account_token"),
        "{}",
        refused.status.message()
    );

    // It cannot review tokens now: the certificate renews itself, and the next one is marked too.
    f.tokens.unavailable.store(true, Ordering::Relaxed);
    let (next_key, renew) = request(|csr| renewal(&chain, &key, csr));
    let next = f.granted(renew).await;
    assert!(marked(&next), "the mark survives the renewal");
    // Back: the renewed certificate too needs a token again.
    f.tokens.unavailable.store(false, Ordering::Relaxed);
    let (_, renew) = request(|csr| renewal(&next, &next_key, csr));
    let refused = f.service.certify(renew).await.err().unwrap();
    assert_eq!(refused.reason, "token_required");
}

#[tokio::test]
async fn a_join_token_certificate_renews_with_itself_as_before() {
    let f = fixture();
    let (key, first) = request(|_| v1::certify_request::Credential::JoinToken("token".into()));
    let chain = f.granted(first).await;
    assert!(!marked(&chain));
    let (_, renew) = request(|csr| renewal(&chain, &key, csr));
    let next = f.granted(renew).await;
    assert!(!marked(&next));
}
