//! Shared by the identity tests: a control plane assembled in-process from the library (store, discovery
//! hub, CA with a manual clock, Identity + Discovery on one listener, Admin on another), served on
//! 127.0.0.1:0 and reached through real tonic clients; plus CSR making and webpki chain validation.

#![allow(dead_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use shoal_control_plane::admin::AdminService;
use shoal_control_plane::discovery::{DiscoveryService, Hub};
use shoal_control_plane::identity::{
    CaSettings, Clock, Identity, ManualClock, bundle, spiffe::TrustDomain,
};
use shoal_control_plane::store::Store;
use shoal_proto::v1::{self, admin_client::AdminClient, identity_client::IdentityClient};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Server, server::TcpIncoming};

pub const TTL: Duration = Duration::from_secs(3600);
/// The CA's propagation timeout (the manual clock has to pass it).
pub const PROPAGATION: Duration = Duration::from_secs(60);

pub struct Mesh {
    pub admin: AdminClient<Channel>,
    pub identity: IdentityClient<Channel>,
    pub discovery_addr: String,
    pub clock: Arc<ManualClock>,
    pub store: Store,
    pub dir: tempfile::TempDir,
    close: watch::Sender<bool>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.close.send_replace(true);
    }
}

pub async fn start() -> Mesh {
    let dir = tempfile::tempdir().expect("temp dir");
    start_in(dir).await
}

pub async fn start_in(dir: tempfile::TempDir) -> Mesh {
    let store = Store::open(dir.path().join("store.redb")).expect("store opens");
    let clock = Arc::new(ManualClock::starting_now());
    let settings = CaSettings {
        trust_domain: TrustDomain::parse("cluster.local").unwrap(),
        cert_ttl: TTL,
        root: None,
        propagation_timeout: PROPAGATION,
    };
    let identity = Identity::open(store.clone(), settings, clock.clone() as Arc<dyn Clock>)
        .expect("CA starts");
    let (close, closing) = watch::channel(false);
    let hub = Hub::new();
    tokio::spawn(hub.clone().follow(store.clone()));
    tokio::spawn(bundle::publish(
        identity.clone(),
        hub.clone(),
        closing.clone(),
    ));
    // A short upkeep interval: activation follows ACKs at once, and timeouts and retirement are driven by
    // the manual clock, not by waiting.
    tokio::spawn(bundle::upkeep(
        identity.clone(),
        hub.clone(),
        Duration::from_millis(20),
        // The only replica: it runs the rotation.
        tokio::sync::watch::channel(true).1,
        None,
        closing.clone(),
    ));

    let discovery = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let discovery_addr = format!("http://{}", discovery.local_addr().unwrap());
    let server = Server::builder()
        .add_service(DiscoveryService::new(hub.clone()).into_server())
        .add_service(identity.certify_service(None).into_server())
        .serve_with_incoming(TcpIncoming::from(discovery));
    tokio::spawn(server);

    let admin_service = AdminService::with_identity(store.clone(), hub.clone(), Some(identity));
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = format!("http://{}", admin.local_addr().unwrap());
    let server = Server::builder()
        .add_service(admin_service.into_server())
        .serve_with_incoming(TcpIncoming::from(admin));
    tokio::spawn(server);

    Mesh {
        admin: AdminClient::new(channel(&admin_addr).await),
        identity: IdentityClient::new(channel(&discovery_addr).await),
        discovery_addr,
        clock,
        store,
        dir,
        close,
    }
}

pub async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connects to a bound listener")
}

impl Mesh {
    pub async fn token(&mut self, ns: &str, sa: &str, uses: u32) -> v1::CreateJoinTokenResponse {
        let request = v1::CreateJoinTokenRequest {
            namespace: ns.into(),
            service_account: sa.into(),
            ttl_seconds: 0,
            max_uses: uses,
        };
        self.admin
            .create_join_token(request)
            .await
            .expect("token created")
            .into_inner()
    }

    pub async fn certify(
        &mut self,
        token: &str,
        ns: &str,
        sa: &str,
    ) -> Result<v1::CertifyResponse, tonic::Status> {
        self.identity
            .certify(certify_request(&csr_pem(), token, ns, sa))
            .await
            .map(tonic::Response::into_inner)
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

pub fn certify_request(csr: &str, token: &str, ns: &str, sa: &str) -> v1::CertifyRequest {
    v1::CertifyRequest {
        csr: Some(v1::certify_request::Csr::CsrPem(csr.to_owned())),
        credential: Some(v1::certify_request::Credential::JoinToken(token.to_owned())),
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

/// A CSR from a fresh in-memory key, as a proxy makes it.
pub fn csr_pem() -> String {
    let key = KeyPair::generate().unwrap();
    CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

/// Validates `chain` (leaf first) against `roots` with webpki, as a TLS peer does, at `at`.
pub fn verify(chain: &[String], roots: &[String], at: SystemTime) -> Result<(), rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(der(root)).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .unwrap();
    let intermediates: Vec<_> = chain[1..].iter().map(|c| der(c)).collect();
    let now = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    verifier
        .verify_client_cert(&der(&chain[0]), &intermediates, now)
        .map(drop)
}

/// A raw discovery stream playing the proxy.
pub struct Proxy {
    pub tx: mpsc::Sender<v1::DiscoveryRequest>,
    pub rx: tonic::Streaming<v1::DiscoveryResponse>,
}

struct Outgoing(mpsc::Receiver<v1::DiscoveryRequest>);

impl Stream for Outgoing {
    type Item = v1::DiscoveryRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

impl Proxy {
    pub async fn connect(addr: &str) -> Proxy {
        Self::connect_as(addr, "proxy-1").await
    }

    pub async fn connect_as(addr: &str, proxy_id: &str) -> Proxy {
        use v1::discovery_request::Request;
        let mut client = v1::discovery_client::DiscoveryClient::new(channel(addr).await);
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::Hello {
            proxy_id: proxy_id.into(),
            ..Default::default()
        };
        tx.send(v1::DiscoveryRequest {
            request: Some(Request::Hello(hello)),
        })
        .await
        .unwrap();
        let rx = client.stream(Outgoing(rx)).await.unwrap().into_inner();
        Proxy { tx, rx }
    }

    pub async fn subscribe_trust_bundle(&self, trust_domain: &str) {
        use v1::discovery_request::Request;
        let key = v1::ResourceKey {
            r#type: v1::ResourceType::TrustBundle as i32,
            name: trust_domain.into(),
        };
        let subscribe = v1::Subscribe {
            resources: vec![key],
        };
        self.tx
            .send(v1::DiscoveryRequest {
                request: Some(Request::Subscribe(subscribe)),
            })
            .await
            .unwrap();
    }

    /// The next push's trust bundle (within 5 s), ACKed.
    pub async fn next_bundle(&mut self) -> v1::TrustBundle {
        self.bundle(true).await
    }

    /// The next push's trust bundle (within 5 s), not ACKed: a proxy that never answers.
    pub async fn next_bundle_unacked(&mut self) -> v1::TrustBundle {
        self.bundle(false).await
    }

    async fn bundle(&mut self, ack: bool) -> v1::TrustBundle {
        use v1::discovery_request::Request;
        let response = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a push within 5 s")
            .expect("stream open")
            .expect("a response");
        if !ack {
            return payload(response);
        }
        let ack = v1::Ack {
            nonce: response.nonce.clone(),
        };
        self.tx
            .send(v1::DiscoveryRequest {
                request: Some(Request::Ack(ack)),
            })
            .await
            .unwrap();
        payload(response)
    }
}

fn payload(response: v1::DiscoveryResponse) -> v1::TrustBundle {
    assert_eq!(response.resources.len(), 1, "{response:?}");
    match response.resources[0].payload.clone() {
        Some(v1::discovery_resource::Payload::TrustBundle(bundle)) => bundle,
        other => panic!("expected a TrustBundle, got {other:?}"),
    }
}

impl Mesh {
    pub async fn ca_status(&mut self) -> v1::CaStatusResponse {
        self.admin
            .ca_status(v1::CaStatusRequest {})
            .await
            .expect("CaStatus")
            .into_inner()
    }

    /// The root states, in the order `CaStatus` lists them.
    pub async fn states(&mut self) -> Vec<v1::CaRootState> {
        (self.ca_status().await.roots.iter())
            .map(|r| v1::CaRootState::try_from(r.state).expect("known state"))
            .collect()
    }

    /// Polls `CaStatus` (every 10 ms, 5 s at most) until the roots are in `states`.
    pub async fn wait_states(&mut self, states: &[v1::CaRootState]) -> v1::CaStatusResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let status = self.ca_status().await;
            let now: Vec<i32> = status.roots.iter().map(|r| r.state).collect();
            if now == states.iter().map(|s| *s as i32).collect::<Vec<_>>() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "roots still {now:?}, expected {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
