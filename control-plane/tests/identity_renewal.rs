//! Renewal with the current certificate: a proxy whose single-use join token is spent renews by
//! proving it holds the certificate the CA issued (and its key); anything short of that is refused.

mod identity_common;

use identity_common::*;
use rcgen::{CertificateParams, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use shoal_proto::v1;
use tonic::Code;

/// A fresh key and its CSR (DER).
fn key_and_csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().expect("key");
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .expect("csr");
    (key, csr.der().to_vec())
}

/// `key`'s ECDSA P-256 signature over `msg`.
fn sign(key: &KeyPair, msg: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng)
            .expect("P-256 key");
    pair.sign(&rng, msg).expect("signature").as_ref().to_vec()
}

fn request(
    csr_der: Vec<u8>,
    credential: v1::certify_request::Credential,
    sa: &str,
) -> v1::CertifyRequest {
    v1::CertifyRequest {
        csr: Some(v1::certify_request::Csr::CsrDer(csr_der)),
        credential: Some(credential),
        namespace: "shop".into(),
        service_account: sa.into(),
    }
}

fn renewal(chain: &[String], csr_signature: Vec<u8>) -> v1::certify_request::Credential {
    v1::certify_request::Credential::Renewal(v1::Renewal {
        certificate_chain_pem: chain.to_vec(),
        csr_signature,
    })
}

#[tokio::test]
async fn a_spent_single_use_token_is_no_obstacle_to_renewal() {
    let mut mesh = start().await;
    let token = mesh.token("shop", "web", 1).await.token;
    let (k1, csr1) = key_and_csr();
    let first = mesh
        .identity
        .certify(request(
            csr1,
            v1::certify_request::Credential::JoinToken(token.clone()),
            "web",
        ))
        .await
        .expect("joined")
        .into_inner();

    // The token is spent.
    let (_, csr) = key_and_csr();
    let again = mesh
        .identity
        .certify(request(
            csr,
            v1::certify_request::Credential::JoinToken(token),
            "web",
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated, "{again:?}");

    // Renewal: the current chain, and the current key's signature over the new CSR.
    let (_, csr2) = key_and_csr();
    let sig = sign(&k1, &csr2);
    let renewed = mesh
        .identity
        .certify(request(
            csr2,
            renewal(&first.certificate_chain_pem, sig),
            "web",
        ))
        .await
        .expect("renewed")
        .into_inner();
    assert_eq!(renewed.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    assert_ne!(renewed.certificate_chain_pem, first.certificate_chain_pem);
    verify(
        &renewed.certificate_chain_pem,
        &renewed.trust_bundle_pem,
        mesh.now(),
    )
    .expect("the renewed chain verifies against the root");

    // Signed with the wrong key (the new one, not the certificate's): refused.
    let (k3, csr3) = key_and_csr();
    let sig = sign(&k3, &csr3);
    let err = mesh
        .identity
        .certify(request(
            csr3,
            renewal(&first.certificate_chain_pem, sig),
            "web",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("csr_signature"), "{err:?}");

    // Another identity than the certificate's: refused, naming both.
    let (_, csr4) = key_and_csr();
    let sig = sign(&k1, &csr4);
    let err = mesh
        .identity
        .certify(request(
            csr4,
            renewal(&first.certificate_chain_pem, sig),
            "admin",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("sa/web") && err.message().contains("sa/admin"),
        "{err:?}"
    );

    // A certificate this CA did not issue (self-signed, same SPIFFE id): refused.
    let fake_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
    )];
    let fake = params.self_signed(&fake_key).unwrap().pem();
    let (_, csr5) = key_and_csr();
    let sig = sign(&fake_key, &csr5);
    let err = mesh
        .identity
        .certify(request(csr5, renewal(&[fake], sig), "web"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("not issued by this CA"), "{err:?}");
}
