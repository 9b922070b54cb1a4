//! Endpoint registrations expire without heartbeats, and heartbeats keep them alive.

use std::time::Duration;

use shoal_proto::v1::{self, ResourceKind};
use tonic::Code;

use super::harness::*;

#[tokio::test]
async fn registrations_expire_without_heartbeats() {
    let mut h = start().await;
    let apply = |r| v1::ApplyRequest { resource: Some(r) };
    h.client
        .apply(apply(service("backend", 8080)))
        .await
        .expect("service");
    h.client
        .create(v1::CreateRequest {
            resource: Some(registration("kept", 1)),
        })
        .await
        .expect("registers");
    h.client
        .create(v1::CreateRequest {
            resource: Some(registration("dropped", 1)),
        })
        .await
        .expect("registers");
    h.client
        .create(v1::CreateRequest {
            resource: Some(registration("forever", 0)),
        })
        .await
        .expect("registers");
    let heartbeat = |name: &str| v1::HeartbeatRequest {
        namespace: String::new(),
        name: name.to_owned(),
    };

    // Keep one alive for 3 ttls while the other lapses.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let beat = h
            .client
            .heartbeat(heartbeat("kept"))
            .await
            .expect("heartbeat")
            .into_inner();
        assert!(beat.expires_at_unix_seconds > 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = h
        .client
        .get(get(ResourceKind::EndpointRegistration, "dropped"))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, &["dropped"]);
    h.client
        .get(get(ResourceKind::EndpointRegistration, "kept"))
        .await
        .expect("heartbeats keep it");
    h.client
        .get(get(ResourceKind::EndpointRegistration, "forever"))
        .await
        .expect("ttl 0 never expires");

    // Stop: gone within its ttl plus the ~1 s check interval (and slack for a loaded machine).
    let client = h.client.clone();
    eventually(Duration::from_secs(3), "the registration to expire", || {
        let mut client = client.clone();
        async move {
            client
                .get(get(ResourceKind::EndpointRegistration, "kept"))
                .await
                .err()
        }
    })
    .await;
    let status = h.client.heartbeat(heartbeat("kept")).await.unwrap_err();
    assert_status(&status, Code::NotFound, &["register it again"]);
}
