//! Identity.Certify end to end over real sockets: a certificate issued with a join token, validated as a peer
//! would (webpki), and every refusal the proto documents, each with a message naming the problem.

mod identity_common;

use std::time::Duration;

use identity_common::*;
use shoal_proto::v1;
use tonic::Code;
use x509_parser::extensions::GeneralName;

fn assert_refused(
    result: Result<v1::CertifyResponse, tonic::Status>,
    code: Code,
    mentions: &[&str],
) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    for text in mentions {
        assert!(
            status.message().contains(text),
            "{text:?} not in {:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_join_token_gets_a_short_lived_spiffe_certificate() {
    let mut mesh = start().await;
    let token = mesh.token("shop", "web", 0).await;
    let issued = mesh
        .certify(&token.token, "shop", "web")
        .await
        .expect("certified");
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(issued.certificate_chain_pem.len(), 1);
    assert_eq!(issued.trust_bundle_pem.len(), 1);

    let leaf_der = der(&issued.certificate_chain_pem[0]);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1);
    assert!(matches!(
        sans[0],
        GeneralName::URI("spiffe://cluster.local/ns/shop/sa/web")
    ));
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime as u64,
        TTL.as_secs() + 300,
        "TTL plus 5 minutes of backdating"
    );
    assert_eq!(
        issued.not_after_unix_seconds as i64,
        leaf.validity().not_after.timestamp()
    );

    verify(
        &issued.certificate_chain_pem,
        &issued.trust_bundle_pem,
        mesh.now(),
    )
    .expect("chain validates");

    // The same (multi-use) token works again, for a fresh key; the use count says so.
    mesh.certify(&token.token, "shop", "web")
        .await
        .expect("second certificate");
    let listed = mesh
        .admin
        .list_join_tokens(v1::ListJoinTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].uses, 2);
}

#[tokio::test]
async fn certify_refuses_what_the_credential_does_not_prove() {
    let mut mesh = start().await;
    let web = mesh.token("shop", "web", 0).await;
    let id = web.info.as_ref().unwrap().id.clone();

    // An identity the token does not grant.
    assert_refused(
        mesh.certify(&web.token, "shop", "admin").await,
        Code::PermissionDenied,
        &[&format!(
            "join token {id} grants spiffe://cluster.local/ns/shop/sa/web, not spiffe://cluster.local/ns/shop/sa/admin"
        )],
    );
    assert_refused(
        mesh.certify(&web.token, "billing", "web").await,
        Code::PermissionDenied,
        &["not spiffe://cluster.local/ns/billing/sa/web"],
    );

    // A reused single-use token.
    let once = mesh.token("shop", "web", 1).await;
    mesh.certify(&once.token, "shop", "web")
        .await
        .expect("first use");
    assert_refused(
        mesh.certify(&once.token, "shop", "web").await,
        Code::Unauthenticated,
        &["already used 1 time"],
    );

    // An expired token.
    let short = v1::CreateJoinTokenRequest {
        namespace: "shop".into(),
        service_account: "web".into(),
        ttl_seconds: 60,
        max_uses: 0,
    };
    let short = mesh
        .admin
        .create_join_token(short)
        .await
        .unwrap()
        .into_inner();
    mesh.clock.advance(Duration::from_secs(120));
    assert_refused(
        mesh.certify(&short.token, "shop", "web").await,
        Code::Unauthenticated,
        &["expired"],
    );

    // A revoked token.
    let revoked = mesh.token("shop", "web", 0).await;
    let revoke = v1::RevokeJoinTokenRequest {
        id: revoked.info.unwrap().id,
    };
    assert!(
        mesh.admin
            .revoke_join_token(revoke)
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap()
            .revoked
    );
    assert_refused(
        mesh.certify(&revoked.token, "shop", "web").await,
        Code::Unauthenticated,
        &["was revoked"],
    );

    // An unknown token, a malformed one, none at all.
    let unknown = format!("{}.{}", "0".repeat(16), "0".repeat(64));
    assert_refused(
        mesh.certify(&unknown, "shop", "web").await,
        Code::Unauthenticated,
        &["unknown"],
    );
    assert_refused(
        mesh.certify("not-a-token", "shop", "web").await,
        Code::Unauthenticated,
        &["malformed"],
    );
    let mut no_credential = certify_request(&csr_pem(), "", "shop", "web");
    no_credential.credential = None;
    assert_refused(
        mesh.identity
            .certify(no_credential)
            .await
            .map(|r| r.into_inner()),
        Code::Unauthenticated,
        &["credential: required"],
    );
    let mut kubernetes = certify_request(&csr_pem(), "", "shop", "web");
    kubernetes.credential =
        Some(v1::certify_request::Credential::KubernetesServiceAccountToken("jwt".into()));
    assert_refused(
        mesh.identity
            .certify(kubernetes)
            .await
            .map(|r| r.into_inner()),
        Code::Unauthenticated,
        &["standalone mode"],
    );

    // A garbage CSR, a tampered one (its signature no longer verifies), a missing one; none consumes a use.
    let garbage = certify_request(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        &web.token,
        "shop",
        "web",
    );
    assert_refused(
        mesh.identity.certify(garbage).await.map(|r| r.into_inner()),
        Code::InvalidArgument,
        &["csr_pem: not a PKCS#10"],
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let mut tampered = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let raw = key.public_key_raw();
    let at = tampered.windows(raw.len()).position(|w| w == raw).unwrap();
    tampered[at + 20] ^= 0x01;
    let mut request = certify_request("", &web.token, "shop", "web");
    request.csr = Some(v1::certify_request::Csr::CsrDer(tampered));
    assert_refused(
        mesh.identity.certify(request).await.map(|r| r.into_inner()),
        Code::InvalidArgument,
        &["csr_der", "signature does not verify"],
    );
    let mut request = certify_request("", &web.token, "shop", "web");
    request.csr = None;
    assert_refused(
        mesh.identity.certify(request).await.map(|r| r.into_inner()),
        Code::InvalidArgument,
        &["csr: required"],
    );
    assert_refused(
        mesh.certify(&web.token, "Shop", "web").await,
        Code::InvalidArgument,
        &["namespace \"Shop\""],
    );

    let listed = mesh
        .admin
        .list_join_tokens(v1::ListJoinTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    let web_info = listed.tokens.iter().find(|t| t.id == id).unwrap();
    assert_eq!(web_info.uses, 0, "refused requests consume no use");
}

#[tokio::test]
async fn join_token_admin_calls_validate_and_store_only_hashes() {
    let mut mesh = start().await;
    let bad = v1::CreateJoinTokenRequest {
        namespace: "shop".into(),
        service_account: "Web".into(),
        ..Default::default()
    };
    let status = mesh.admin.create_join_token(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("service_account \"Web\""),
        "{}",
        status.message()
    );
    let missing = v1::RevokeJoinTokenRequest {
        id: "0123456789abcdef".into(),
    };
    assert_eq!(
        mesh.admin
            .revoke_join_token(missing)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let token = mesh.token("shop", "web", 1).await;
    let secret = token.token.split_once('.').unwrap().1.to_owned();
    let bytes = std::fs::read(mesh.dir.path().join("store.redb")).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret stored in clear"
    );
    let listing = format!(
        "{:?}",
        mesh.admin
            .list_join_tokens(v1::ListJoinTokensRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(!listing.contains(&secret));
}
