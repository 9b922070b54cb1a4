//! The proxy's certificate from a control plane's `Identity.Certify`: a fake CA (a real tonic
//! server signing real CSRs) issues short-lived certificates, and the proxy must renew before
//! expiry, keep serving with its current certificate while the CA is away, and recover when it
//! is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use shoal_proto::v1;
use shoal_tests::pki::TestCa;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, assert_eventually};
use tonic::{Request, Response, Status};

const TOKEN: &str = "test-join-token";
const LIFETIME: Duration = Duration::from_secs(4);

/// A CA that signs every CSR carrying [`TOKEN`], unless told to be unavailable.
struct FakeCaState {
    ca: TestCa,
    calls: AtomicUsize,
    /// Calls that renewed with the current certificate instead of the token.
    renewals: AtomicUsize,
    down: AtomicBool,
}

#[derive(Clone)]
struct FakeCa(Arc<FakeCaState>);

impl std::ops::Deref for FakeCa {
    type Target = FakeCaState;
    fn deref(&self) -> &FakeCaState {
        &self.0
    }
}

#[tonic::async_trait]
impl v1::identity_server::Identity for FakeCa {
    async fn certify(
        &self,
        req: Request<v1::CertifyRequest>,
    ) -> Result<Response<v1::CertifyResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("CA down for the test"));
        }
        let req = req.into_inner();
        match req.credential {
            Some(v1::certify_request::Credential::JoinToken(t)) if t == TOKEN => {}
            // The real CA checks the chain and the signature; here: it is this CA's certificate.
            Some(v1::certify_request::Credential::Renewal(r))
                if r.certificate_chain_pem.len() == 1 && !r.csr_signature.is_empty() =>
            {
                self.renewals.fetch_add(1, Ordering::SeqCst);
            }
            _ => return Err(Status::unauthenticated("unknown token")),
        }
        let Some(v1::certify_request::Csr::CsrDer(csr)) = req.csr else {
            return Err(Status::invalid_argument("expected a DER CSR"));
        };
        let id = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            req.namespace, req.service_account
        );
        let cert = self.ca.sign_csr(&csr, &id, LIFETIME);
        let not_after = std::time::SystemTime::now() + LIFETIME;
        Ok(Response::new(v1::CertifyResponse {
            certificate_chain_pem: vec![cert],
            trust_bundle_pem: vec![self.ca.root_pem().to_string()],
            not_after_unix_seconds: not_after
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            spiffe_id: id,
        }))
    }
}

async fn serve_ca(ca: FakeCa) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::identity_server::IdentityServer::new(ca))
            .serve_with_incoming(incoming),
    );
    addr
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

async fn identity(proxy: &Proxy) -> serde_json::Value {
    proxy.config().await["identity"].clone()
}

#[tokio::test]
async fn renews_before_expiry_and_rides_out_a_ca_outage() {
    let ca = FakeCa(Arc::new(FakeCaState {
        ca: TestCa::new("fake-cp"),
        calls: AtomicUsize::new(0),
        renewals: AtomicUsize::new(0),
        down: AtomicBool::new(false),
    }));
    let addr = serve_ca(ca.clone()).await;
    let app = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_IDENTITY_TOKEN", TOKEN)
        .env("SHOAL_IDENTITY_ADDR", format!("http://{addr}")) // the fake CA speaks h2c
        .env("SHOAL_NAMESPACE", "shop")
        .env("SHOAL_SERVICE_ACCOUNT", "web")
        .start()
        .await;
    // Ready means certified.
    let first = identity(&proxy).await;
    assert_eq!(
        first["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web",
        "{first}"
    );
    let first_expiry = first["not_after_unix_seconds"].as_u64().unwrap();

    // Renewal at ~70 % of 4 s: a new certificate (a later expiry) well before the first expires.
    assert_eventually!(
        Duration::from_secs(6),
        {
            let now = identity(&proxy).await;
            now["certificates"].as_u64().unwrap_or(0) >= 3
                && now["not_after_unix_seconds"].as_u64().unwrap_or(0) > first_expiry
        },
        "two renewals with later expiries"
    );
    // Renewals prove the current certificate; the token is only for joining.
    assert!(ca.renewals.load(Ordering::SeqCst) >= 2);
    let expiry = proxy
        .metric("shoal_identity_certificate_expiry_seconds", &[])
        .await;
    assert!(expiry > 0.0 && expiry <= LIFETIME.as_secs_f64(), "{expiry}");

    // CA away: the proxy retries (more calls: a renewal, then the token, per attempt), reports the
    // error, and keeps its certificate meanwhile.
    ca.down.store(true, Ordering::SeqCst);
    let calls = ca.calls.load(Ordering::SeqCst);
    assert_eventually!(
        Duration::from_secs(8),
        identity(&proxy).await["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("CA down"),
        "the CA's error reported in /config"
    );
    assert_eventually!(
        Duration::from_secs(8),
        ca.calls.load(Ordering::SeqCst) >= calls + 3,
        "retries while the CA is down"
    );
    let during = identity(&proxy).await;
    assert!(during["spiffe_id"].is_string());
    let errors = proxy
        .metric("shoal_identity_certificates_total", &[("result", "error")])
        .await;
    assert!(errors >= 1.0);

    // Back: a fresh certificate, the error cleared.
    ca.down.store(false, Ordering::SeqCst);
    assert_eventually!(
        Duration::from_secs(40),
        identity(&proxy).await["last_error"].is_null(),
        "a certificate again once the CA is back"
    );
}
