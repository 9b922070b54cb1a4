//! Join tokens shared by control-plane replicas in Kubernetes mode: two real control planes on one fake API
//! server keep them in the Secret `shoal-join-tokens`. A token created through one replica's Admin API
//! (`shoalctl token create`) certifies a proxy through the other; a single-use token used on one is refused as
//! exhausted on the other; a token revoked on one is refused on the other.

use shoal_proto::v1;
use shoal_tests::control_plane::{ControlPlane, certify_plaintext};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{TOKEN, control_plane};
use shoal_tests::process::TempDir;

const NAMESPACE: &str = "shoal-system";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
/// For the raw Certify calls (no TLS set-up needed to play a proxy).
const SETTINGS: [(&str, &str); 1] = [("SHOAL_CP_DISCOVERY_PLAINTEXT", "true")];

/// Identity.Certify for `default/web` through `cp` with the join token `token`: the refusal's message, if any.
async fn certify(cp: &ControlPlane, token: &str) -> Result<(), String> {
    let credential = v1::certify_request::Credential::JoinToken(token.into());
    match certify_plaintext(cp, "default", "web", credential).await {
        Ok(answer) => {
            assert_eq!(answer.spiffe_id, WEB_ID);
            Ok(())
        }
        Err(status) => Err(status.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_created_on_one_replica_certifies_through_another_is_used_up_and_revoked_everywhere()
 {
    let kube = FakeKube::start(TOKEN).await;
    let (dir_a, dir_b) = (
        TempDir::new("tokens-a").unwrap(),
        TempDir::new("tokens-b").unwrap(),
    );
    let a = control_plane(&kube, &dir_a, &SETTINGS).await;
    let b = control_plane(&kube, &dir_b, &SETTINGS).await;

    // Created through a, single use, a proxy certifies with it through b.
    let single = a.join_token("web", Some("1")).await;
    let proxy = b
        .proxy_builder("vm-web.default")
        .env("SHOAL_SERVICE_ACCOUNT", "web")
        .env("SHOAL_IDENTITY_TOKEN", &single)
        .start()
        .await;
    assert_eq!(proxy.config().await["identity"]["spiffe_id"], WEB_ID);
    let secret = kube
        .secret(NAMESPACE, "shoal-join-tokens")
        .expect("the Secret");
    assert!(secret["data"]["join-tokens"].is_string(), "{secret}");

    // Its one use was on b: a refuses it, and lists the use.
    let refused = certify(&a, &single).await.unwrap_err();
    assert!(refused.contains("already used 1 time(s)"), "{refused}");
    let listed = a.ctl(&["token", "list"], None).await.success().stdout;
    let id = single.split('.').next().unwrap();
    assert!(
        listed.lines().any(|l| l.contains(id) && l.contains("1/1")),
        "{listed}"
    );

    // Unlimited, created through a, revoked through b: a refuses it.
    let unlimited = a.join_token("web", Some("0")).await;
    certify(&a, &unlimited).await.expect("the unlimited token");
    certify(&b, &unlimited).await.expect("the unlimited token");
    let id = unlimited.split('.').next().unwrap();
    b.ctl(&["token", "revoke", id], None).await.success();
    let refused = certify(&a, &unlimited).await.unwrap_err();
    assert!(refused.contains("revoked"), "{refused}");

    // Nothing secret in the logs.
    for cp in [&a, &b] {
        assert!(!cp.logs().contains(&single), "{}", cp.logs());
    }
}
