//! The manifests of docs/kubernetes-walkthrough.md (`docs/examples/walkthrough/`) are what the walkthrough says:
//! the Kubernetes ones pass `kubernetes-validate --strict` for the chart's oldest Kubernetes as written and once
//! injected (`shoalctl inject`, the webhook's mutation), each injected pod getting its projected token; the
//! Shoal one (`route.yaml`) is accepted by a real control plane's `shoalctl apply`.

use std::path::PathBuf;

use shoal_tests::admission::kubernetes_validate;
use shoal_tests::control_plane::{ControlPlaneBuilder, shoalctl};
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;

const OLDEST_KUBERNETES: &str = "1.28.0";

fn example(name: &str) -> PathBuf {
    shoal_tests::proxy::workspace_root()
        .join("docs/examples/walkthrough")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthroughs_manifests_are_valid_and_injectable() {
    let manifests = ["namespace.yaml", "web.yaml", "client.yaml"].map(example);
    let paths: Vec<&std::path::Path> = manifests.iter().map(PathBuf::as_path).collect();
    kubernetes_validate(&paths, OLDEST_KUBERNETES).unwrap();

    let dir = TempDir::new("walkthrough").unwrap();
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, TestCa::new("mesh").root_pem()).unwrap();
    for name in ["web.yaml", "client.yaml"] {
        let text = std::fs::read_to_string(example(name)).unwrap();
        let out = shoalctl(
            "http://127.0.0.1:1",
            &[
                "inject",
                "-f",
                "-",
                "--trust-anchors",
                &anchors.display().to_string(),
            ],
            Some(&text),
        )
        .await
        .unwrap()
        .success();
        let injected = dir.path().join(format!("injected-{name}"));
        std::fs::write(&injected, &out.stdout).unwrap();
        kubernetes_validate(&[&injected], OLDEST_KUBERNETES).unwrap();
        // Every Deployment's pods certify themselves with a token projected for the chart's audience.
        let deployments = out.stdout.matches("kind: Deployment").count();
        assert!(deployments >= 1, "{name}: {}", out.stdout);
        assert_eq!(
            out.stdout.matches("audience: shoal").count(),
            deployments,
            "{name}: {}",
            out.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthroughs_route_applies() {
    let cp = ControlPlaneBuilder::new().start().await;
    let route = std::fs::read_to_string(example("route.yaml")).unwrap();
    let out = cp.apply(&route).await.success();
    assert!(
        out.stdout.contains("route/web.demo created"),
        "{}",
        out.stdout
    );
    let got = cp
        .ctl(&["get", "route", "web", "-n", "demo", "-o", "yaml"], None)
        .await
        .success();
    assert!(got.stdout.contains("weight: 90"), "{}", got.stdout);
}
