//! CA rotation end to end: the new root joins the trust bundle pushed to a subscribed proxy as PENDING while
//! the old root keeps signing; once the proxy ACKs that bundle the new root signs (old certificates still
//! validate); a proxy that never ACKs holds that until the propagation timeout; the old root leaves the bundle
//! at its retire time (a manual clock stands in for the minutes and hours of waiting). Restarts mid-rotation
//! are in shoalctl_cli/identity.rs, against the real binary.

mod identity_common;

use std::time::Duration;

use identity_common::*;
use shoal_proto::v1;
use tonic::Code;
use v1::CaRootState::{Active, Pending, Retiring};

#[tokio::test]
async fn rotation_is_pending_until_the_proxy_acks_then_signs_then_retires_the_old_root() {
    let mut mesh = start().await;
    let token = mesh.token("shop", "web", 0).await.token;
    let before = mesh.certify(&token, "shop", "web").await.unwrap();

    let mut proxy = Proxy::connect(&mesh.discovery_addr).await;
    proxy.subscribe_trust_bundle("cluster.local").await;
    let initial = proxy.next_bundle().await;
    assert_eq!(initial.trust_domain, "cluster.local");
    assert_eq!(initial.roots_pem, before.trust_bundle_pem);

    let rotated = mesh
        .admin
        .rotate_ca(v1::RotateCaRequest::default())
        .await
        .unwrap()
        .into_inner();
    let status = rotated.status.unwrap();
    let states: Vec<i32> = status.roots.iter().map(|r| r.state).collect();
    assert_eq!(states, [Active as i32, Pending as i32]);
    let old_root = status.roots[0].certificate_pem.clone();
    let new_root = status.roots[1].certificate_pem.clone();
    assert_eq!(old_root, initial.roots_pem[0]);
    assert!(status.roots[1].activate_by_unix_seconds > 0);

    // Before the proxy has ACKed: Certify hands out both roots, but certificates from the old one.
    let during = mesh.certify(&token, "shop", "web").await.unwrap();
    assert_eq!(
        during.trust_bundle_pem,
        [old_root.clone(), new_root.clone()]
    );
    verify(
        &during.certificate_chain_pem,
        std::slice::from_ref(&old_root),
        mesh.now(),
    )
    .expect("the old root still signs while the new one is pending");
    // The upkeep runs every 20 ms: several times over while the proxy has not ACKed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mesh.states().await, [Active, Pending], "no ACK yet");

    // The proxy receives (and ACKs) both roots; the new one then signs, and the reordered bundle follows.
    let both = proxy.next_bundle().await;
    assert_eq!(both.roots_pem, [old_root.clone(), new_root.clone()]);
    let activated = mesh.wait_states(&[Active, Retiring]).await;
    assert_eq!(activated.roots[0].certificate_pem, new_root);
    let reordered = proxy.next_bundle().await;
    assert_eq!(reordered.roots_pem, [new_root.clone(), old_root.clone()]);

    // New certificates chain to the new root; every generation validates against the pushed bundle.
    let after = mesh.certify(&token, "shop", "web").await.unwrap();
    assert_eq!(after.trust_bundle_pem, reordered.roots_pem);
    verify(
        &after.certificate_chain_pem,
        std::slice::from_ref(&new_root),
        mesh.now(),
    )
    .expect("new root");
    assert!(
        verify(
            &after.certificate_chain_pem,
            std::slice::from_ref(&old_root),
            mesh.now()
        )
        .is_err()
    );
    for chain in [&before, &during, &after] {
        verify(
            &chain.certificate_chain_pem,
            &reordered.roots_pem,
            mesh.now(),
        )
        .expect("trusted by the bundle every proxy has");
    }

    // A second rotation must wait for the first to finish.
    let status = mesh
        .admin
        .rotate_ca(v1::RotateCaRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("rotation is in progress")
            && status.message().contains("RETIRING"),
        "{}",
        status.message()
    );

    // At retire_at (every old certificate expired) the old root leaves the bundle, pushed to the proxy.
    mesh.clock.advance(TTL);
    let retired = proxy.next_bundle().await;
    assert_eq!(retired.roots_pem, vec![new_root.clone()]);
    assert_eq!(mesh.states().await, [Active]);
}

#[tokio::test]
async fn a_proxy_that_never_acks_holds_the_new_root_back_until_the_propagation_timeout() {
    let mut mesh = start().await;
    let mut silent = Proxy::connect_as(&mesh.discovery_addr, "silent").await;
    silent.subscribe_trust_bundle("cluster.local").await;
    silent.next_bundle_unacked().await;

    let rotated = mesh
        .admin
        .rotate_ca(v1::RotateCaRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let pending = &rotated.roots[1];
    assert_eq!(
        pending.activate_by_unix_seconds,
        pending.pending_since_unix_seconds + PROPAGATION.as_secs()
    );
    let both = silent.next_bundle_unacked().await;
    assert_eq!(both.roots_pem.len(), 2);

    // Pending: a second rotation is refused naming the phase and the root.
    let refused = mesh
        .admin
        .rotate_ca(v1::RotateCaRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("PENDING")
            && refused.message().contains(&pending.fingerprint_sha256),
        "{}",
        refused.message()
    );

    // The upkeep (every 20 ms) keeps it pending while the proxy is silent, up to one second before the
    // deadline...
    mesh.clock.advance(PROPAGATION - Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mesh.states().await, [Active, Pending]);
    // ...and activates it at the deadline.
    mesh.clock.advance(Duration::from_secs(1));
    let activated = mesh.wait_states(&[Active, Retiring]).await;
    assert_eq!(
        activated.roots[0].fingerprint_sha256,
        pending.fingerprint_sha256
    );
    let token = mesh.token("shop", "web", 0).await.token;
    let issued = mesh.certify(&token, "shop", "web").await.unwrap();
    verify(
        &issued.certificate_chain_pem,
        std::slice::from_ref(&pending.certificate_pem),
        mesh.now(),
    )
    .expect("the new root signs after the timeout");
    drop(silent);
}

#[tokio::test]
async fn rotate_ca_checks_activate_after() {
    let mut mesh = start().await;
    let too_long = v1::RotateCaRequest {
        activate_after_seconds: 86_401,
        ..Default::default()
    };
    let status = mesh.admin.rotate_ca(too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("activate_after_seconds"),
        "{}",
        status.message()
    );
    // A silent proxy keeps the root pending; the rotation's own timeout (5 min) replaces the setting.
    let mut silent = Proxy::connect_as(&mesh.discovery_addr, "silent").await;
    silent.subscribe_trust_bundle("cluster.local").await;
    silent.next_bundle_unacked().await;
    let request = v1::RotateCaRequest {
        activate_after_seconds: 300,
        ..Default::default()
    };
    let status = mesh
        .admin
        .rotate_ca(request)
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let pending = &status.roots[1];
    assert_eq!(
        pending.activate_by_unix_seconds,
        pending.pending_since_unix_seconds + 300
    );
    mesh.clock.advance(PROPAGATION);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mesh.states().await,
        [Active, Pending],
        "the setting no longer decides"
    );
    mesh.clock.advance(Duration::from_secs(300) - PROPAGATION);
    mesh.wait_states(&[Active, Retiring]).await;
    drop(silent);
}

#[tokio::test]
async fn rotation_to_an_operator_root_and_bad_requests() {
    let mut mesh = start().await;
    let missing_key = v1::RotateCaRequest {
        root_certificate_pem: "x".into(),
        ..Default::default()
    };
    let status = mesh.admin.rotate_ca(missing_key).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("root_private_key_pem"),
        "{}",
        status.message()
    );

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = params.self_signed(&key).unwrap();
    let wrong_key = v1::RotateCaRequest {
        root_certificate_pem: root.pem(),
        root_private_key_pem: rcgen::KeyPair::generate().unwrap().serialize_pem(),
        ..Default::default()
    };
    let status = mesh.admin.rotate_ca(wrong_key).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("does not belong"),
        "{}",
        status.message()
    );

    let request = v1::RotateCaRequest {
        root_certificate_pem: root.pem(),
        root_private_key_pem: key.serialize_pem(),
        ..Default::default()
    };
    mesh.admin
        .rotate_ca(request)
        .await
        .expect("rotates to the operator's root");
    // No proxy is connected: nothing to wait for, the new root signs at the next upkeep tick.
    mesh.wait_states(&[Active, Retiring]).await;
    let token = mesh.token("shop", "web", 0).await.token;
    let issued = mesh.certify(&token, "shop", "web").await.unwrap();
    assert_eq!(
        issued.certificate_chain_pem.len(),
        2,
        "leaf + the control plane's intermediate"
    );
    verify(&issued.certificate_chain_pem, &[root.pem()], mesh.now())
        .expect("chains to the operator's root");
}
