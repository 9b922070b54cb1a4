use super::*;

fn settings(dir: &Path, url: &str, ca: Option<&str>) -> KubernetesConfig {
    KubernetesConfig {
        api_url: url.to_owned(),
        token_file: dir.join("token"),
        ca_file: ca.map(|name| dir.join(name)),
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
    }
}

async fn refusal(config: &KubernetesConfig) -> String {
    KubernetesSource::connect(config, TrustDomain::default())
        .await
        .expect_err("refused")
        .to_string()
}

#[tokio::test]
async fn unusable_token_and_ca_files_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let plain = settings(dir.path(), "http://127.0.0.1:1", None);
    let error = refusal(&plain).await;
    assert!(
        error.contains("SHOAL_CP_KUBERNETES_TOKEN_FILE") && error.contains("cannot read"),
        "{error}"
    );
    std::fs::write(dir.path().join("token"), "  \n").unwrap();
    let error = refusal(&plain).await;
    assert!(
        error.contains("SHOAL_CP_KUBERNETES_TOKEN_FILE") && error.contains("empty"),
        "{error}"
    );
    std::fs::write(dir.path().join("token"), "secret\n").unwrap();
    let error = refusal(&plain).await;
    assert!(
        error.contains("SHOAL_CP_KUBERNETES_TOKEN_FILE") && error.contains("white space"),
        "{error}"
    );
    std::fs::write(dir.path().join("token"), "secret").unwrap();
    KubernetesSource::connect(&plain, TrustDomain::default())
        .await
        .expect("a token file is all plain HTTP needs");

    let tls = settings(dir.path(), "https://127.0.0.1:1", Some("ca.crt"));
    let error = refusal(&tls).await;
    assert!(
        error.contains("SHOAL_CP_KUBERNETES_CA_FILE") && error.contains("cannot read"),
        "{error}"
    );
    std::fs::write(dir.path().join("ca.crt"), "not a certificate\n").unwrap();
    let error = refusal(&tls).await;
    assert!(
        error.contains("SHOAL_CP_KUBERNETES_CA_FILE") && error.contains("no PEM certificate"),
        "{error}"
    );
}
