//! CA rotation end to end: the new root joins the trust bundle pushed to a subscribed proxy, new certificates
//! chain to it while old ones still validate, and the old root leaves the bundle at its retire time (a
//! manual clock stands in for the hours of waiting). Restarts mid-rotation are in shoalctl_cli/identity.rs,
//! against the real binary.

mod identity_common;

use identity_common::*;
use shoal_proto::v1;
use tonic::Code;

#[tokio::test]
async fn rotation_pushes_both_roots_then_retires_the_old_one() {
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
    assert_eq!(status.roots.len(), 2);
    assert_eq!(status.roots[1].state, v1::CaRootState::Retiring as i32);
    let new_root = status.roots[0].certificate_pem.clone();
    let old_root = status.roots[1].certificate_pem.clone();
    assert_eq!(old_root, initial.roots_pem[0]);

    // The proxy receives both roots as an incremental update.
    let both = proxy.next_bundle().await;
    assert_eq!(both.roots_pem, vec![new_root.clone(), old_root.clone()]);

    // New certificates chain to the new root; old and new both validate against the pushed bundle.
    let after = mesh.certify(&token, "shop", "web").await.unwrap();
    assert_eq!(after.trust_bundle_pem, both.roots_pem);
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
    verify(&before.certificate_chain_pem, &both.roots_pem, mesh.now())
        .expect("old certificates still trusted");
    verify(&after.certificate_chain_pem, &both.roots_pem, mesh.now())
        .expect("new certificates trusted");

    // A second rotation must wait for the first to finish.
    let status = mesh
        .admin
        .rotate_ca(v1::RotateCaRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("rotation is in progress"),
        "{}",
        status.message()
    );

    // At retire_at (every old certificate expired) the old root leaves the bundle, pushed to the proxy.
    mesh.clock.advance(TTL);
    let retired = proxy.next_bundle().await;
    assert_eq!(retired.roots_pem, vec![new_root.clone()]);
    let status = mesh
        .admin
        .ca_status(v1::CaStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.roots.len(), 1);
    assert_eq!(status.roots[0].state, v1::CaRootState::Active as i32);
}

#[tokio::test]
async fn rotation_to_an_operator_root_and_bad_requests() {
    let mut mesh = start().await;
    let missing_key = v1::RotateCaRequest {
        root_certificate_pem: "x".into(),
        root_private_key_pem: String::new(),
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
    };
    mesh.admin
        .rotate_ca(request)
        .await
        .expect("rotates to the operator's root");
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
