//! Sidecar injection end to end: the real control plane serves the admission webhook over HTTPS with a
//! certificate from files; real `AdmissionReview`s are POSTed to it, the returned JSONPatch is applied with
//! the tests' own RFC 6902 code, and the patched pod is validated against Kubernetes 1.28's schemas with
//! `kubernetes-validate --strict`. `shoalctl inject` runs as the real binary on multi-document input. A proxy
//! started with the injected settings certifies itself with its projected token (TokenReview at the fake API
//! server).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::admission::{apply_patch, base64_decode, kubernetes_validate, post, review};
use shoal_tests::control_plane::{ControlPlane, ControlPlaneBuilder, http_get, shoalctl};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::pki::{TestCa, write_atomically};
use shoal_tests::process::TempDir;
use shoal_tests::{eventually, metric_value};

/// The name the API server verifies the webhook's certificate against (the chart's Service).
const SERVICE_DNS: &str = "shoal-control-plane.shoal-system.svc";
const OLDEST_KUBERNETES: &str = "1.28.0";

/// A pod as a Deployment's ReplicaSet creates it (no name yet, a generateName).
fn web_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c-",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web",
            "securityContext": {"runAsNonRoot": true},
            "initContainers": [{"name": "migrate", "image": "web-migrate:1"}],
            "containers": [{
                "name": "web",
                "image": "web:1",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
            }],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
    })
}

struct Webhook {
    cp: ControlPlane,
    ca: TestCa,
    dir: TempDir,
}

impl Webhook {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Self::start`] with more control-plane settings.
    async fn start_with(settings: &[(&str, String)]) -> Self {
        let dir = TempDir::new("webhook").unwrap();
        let ca = TestCa::new("webhook-ca");
        let leaf = ca.issue_without_spiffe(SERVICE_DNS);
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let config = dir.path().join("injector.yaml");
        std::fs::write(
            &config,
            "image: registry.example/shoal/shoal-proxy:test\n\
             init_image: registry.example/shoal/shoal-proxy-init:test\nlog_format: json\n",
        )
        .unwrap();
        let mut cp = ControlPlaneBuilder::new()
            .env("SHOAL_CP_WEBHOOK_ADDR", "127.0.0.1:0")
            .env("SHOAL_CP_WEBHOOK_CERT_FILE", cert.display())
            .env("SHOAL_CP_WEBHOOK_KEY_FILE", key.display())
            .env("SHOAL_CP_INJECTOR_CONFIG_FILE", config.display());
        for (key, value) in settings {
            cp = cp.env(key, value);
        }
        let cp = cp.start().await;
        Self { cp, ca, dir }
    }

    /// POSTs a review of `pod` in `namespace`; returns the `response` of the answer after checking the
    /// envelope and the echoed uid.
    async fn review(&self, namespace: &str, pod: &Value) -> Value {
        let uid = format!("uid-{}", fastrand_like(pod));
        let body = serde_json::to_vec(&review(&uid, namespace, pod)).unwrap();
        let (status, answer) = post(
            self.cp.webhook_addr(),
            SERVICE_DNS,
            self.ca.root_pem(),
            "/inject",
            "POST",
            &body,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], uid, "the uid is echoed");
        response
    }

    /// The decoded JSONPatch of an allowed answer.
    fn patch(response: &Value) -> Value {
        assert_eq!(response["allowed"], true, "{response:#}");
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64_decode(response["patch"].as_str().unwrap()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

/// A uid that differs per pod content (the API server sends a fresh one per request).
fn fastrand_like(pod: &Value) -> usize {
    pod.to_string().len() * 7919 % 100_000
}

fn init_container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name}: {pod:#}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    let vars = container["env"].as_array().unwrap();
    let var = vars.iter().find(|v| v["name"] == name);
    &var.unwrap_or_else(|| panic!("no {name} in {container:#}"))["value"]
}

fn validate(dir: &Path, name: &str, doc: &Value) {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    if let Err(error) = kubernetes_validate(&[&file], OLDEST_KUBERNETES) {
        panic!("{error:#}\n{doc:#}");
    }
}

#[tokio::test]
async fn the_webhook_injects_a_valid_native_sidecar_and_refuses_bad_annotations() {
    let hook = Webhook::start().await;
    let annotations = json!({
        "shoal.io/exclude-inbound-ports": "22",
        "shoal.io/exclude-outbound-cidrs": "169.254.169.254",
        "shoal.io/proxy-memory-limit": "256Mi",
        "shoal.io/proxy-log-level": "debug",
        "shoal.io/server-first-ports": "3306",
    });
    let pod = web_pod(annotations);
    let response = hook.review("shop", &pod).await;
    let mut patched = pod.clone();
    apply_patch(&mut patched, &Webhook::patch(&response)).unwrap();

    let names: Vec<&str> = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shoal-init", "shoal-proxy", "migrate"]);
    let proxy = init_container(&patched, "shoal-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        proxy["image"], "registry.example/shoal/shoal-proxy:test",
        "from the injector's file"
    );
    assert_eq!(
        init_container(&patched, "shoal-init")["image"],
        "registry.example/shoal/shoal-proxy-init:test"
    );
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15021})
    );
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(env(proxy, "SHOAL_LOG"), "debug");
    assert_eq!(env(proxy, "SHOAL_LOG_FORMAT"), "json");
    assert_eq!(env(proxy, "SHOAL_SERVER_FIRST_PORTS"), "3306");
    assert_eq!(
        env(proxy, "SHOAL_DISCOVERY_ADDR"),
        "https://shoal-control-plane.shoal-system.svc:15010"
    );
    let init = init_container(&patched, "shoal-init");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(env(init, "SHOAL_INIT_EXCLUDE_INBOUND_PORTS"), "22");
    assert_eq!(
        env(init, "SHOAL_INIT_EXCLUDE_OUTBOUND_CIDRS"),
        "169.254.169.254"
    );
    assert_eq!(env(init, "SHOAL_INIT_PROXY_UID"), "1337");
    // The trust anchors are the control plane's own roots, the file proxies are told to trust.
    let anchors = std::fs::read_to_string(hook.cp.anchors_file()).unwrap();
    assert_eq!(
        patched["metadata"]["annotations"]["shoal.io/trust-anchors"],
        anchors
    );
    assert_eq!(patched["spec"]["volumes"][1]["name"], "shoal-trust-anchors");
    // The proxy's credential: the pod's service-account token, projected for the control plane's audience.
    assert_eq!(
        patched["spec"]["volumes"][2],
        json!({"name": "shoal-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "shoal", "expirationSeconds": 3600, "path": "token"}}]}})
    );
    assert_eq!(
        env(proxy, "SHOAL_IDENTITY_TOKEN_FILE"),
        "/var/run/shoal/token/token"
    );
    assert_eq!(env(proxy, "SHOAL_IDENTITY_TOKEN_KIND"), "kubernetes");
    // kubernetes-validate wants a name, which the API server generates from generateName.
    let mut named = patched.clone();
    named["metadata"]["name"] = json!("web-7d4b9c-x2x9z");
    validate(hook.dir.path(), "patched-pod.json", &named);

    // Re-injection (a reinvocation, or a copied manifest): an empty patch.
    let again = hook.review("shop", &patched).await;
    assert_eq!(Webhook::patch(&again), json!([]));

    // Opt-out by label, and pods that are never injected: empty patches too.
    let mut opted_out = web_pod(json!({}));
    opted_out["metadata"]["labels"]["shoal.io/inject"] = json!("disabled");
    assert_eq!(
        Webhook::patch(&hook.review("shop", &opted_out).await),
        json!([])
    );
    let system = hook
        .review(
            "kube-system",
            &web_pod(json!({"shoal.io/inject": "enabled"})),
        )
        .await;
    assert_eq!(Webhook::patch(&system), json!([]));
    let warnings = system["warnings"].as_array().expect("the user is told why");
    assert!(
        warnings[0].as_str().unwrap().contains("kube-system"),
        "{warnings:?}"
    );
    let mut host = web_pod(json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(Webhook::patch(&hook.review("shop", &host).await), json!([]));

    // A bad value is refused, naming the annotation.
    let bad = hook
        .review(
            "shop",
            &web_pod(json!({"shoal.io/exclude-outbound-ports": "5432,postgres"})),
        )
        .await;
    assert_eq!(bad["allowed"], false);
    let message = bad["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("annotation shoal.io/exclude-outbound-ports"),
        "{message}"
    );
    assert!(message.contains("`postgres` is not a port"), "{message}");

    // Not a review: 400; elsewhere: 404/405.
    let addr = hook.cp.webhook_addr();
    let root = hook.ca.root_pem();
    let (status, _) = post(addr, SERVICE_DNS, root, "/inject", "POST", b"{}")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = post(addr, SERVICE_DNS, root, "/inject", "GET", b"")
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = post(addr, SERVICE_DNS, root, "/mutate", "POST", b"{}")
        .await
        .unwrap();
    assert_eq!(status, 404);

    let metrics = http_get(hook.cp.metrics_addr(), "/metrics")
        .await
        .unwrap()
        .body;
    let count =
        |result: &str| metric_value(&metrics, "shoal_cp_injections_total", &[("result", result)]);
    assert_eq!(count("injected"), 1.0, "{metrics}");
    assert_eq!(count("skipped"), 4.0, "{metrics}");
    assert_eq!(count("denied"), 1.0, "{metrics}");
    assert_eq!(count("malformed"), 1.0, "{metrics}");

    // `shoalctl inject` without --trust-anchors asks this control plane for them.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'web:1'}]}\n";
    let out = hook
        .cp
        .ctl(&["inject", "-f", "-"], Some(deployment))
        .await
        .success();
    let doc: Value = serde_yaml_ng::from_str(out.stdout.trim_start_matches("---\n")).unwrap();
    assert_eq!(
        doc["spec"]["template"]["metadata"]["annotations"]["shoal.io/trust-anchors"],
        anchors
    );
}

#[tokio::test]
async fn a_renewed_webhook_certificate_is_served_without_a_restart() {
    let hook = Webhook::start().await;
    let pod = web_pod(json!({}));
    hook.review("shop", &pod).await;
    // cert-manager (or helm upgrade) writes a certificate from another CA into the Secret's files.
    let next = TestCa::new("webhook-ca-2");
    let leaf = next.issue_without_spiffe(SERVICE_DNS);
    write_atomically(&hook.dir.path().join("tls.key"), &leaf.key_pem);
    write_atomically(&hook.dir.path().join("tls.crt"), &leaf.cert_pem);
    let body = serde_json::to_vec(&review("renewed", "shop", &pod)).unwrap();
    let addr = hook.cp.webhook_addr();
    eventually(
        Duration::from_secs(10),
        "the renewed certificate is served",
        || {
            let body = body.clone();
            let root = next.root_pem().to_owned();
            async move { post(addr, SERVICE_DNS, &root, "/inject", "POST", &body).await }
        },
    )
    .await;
    let old = post(
        addr,
        SERVICE_DNS,
        hook.ca.root_pem(),
        "/inject",
        "POST",
        &body,
    )
    .await;
    assert!(old.is_err(), "the old certificate is no longer served");
}

#[tokio::test]
async fn the_control_plane_refuses_unusable_webhook_settings_naming_them() {
    let dir = TempDir::new("webhook-bad").unwrap();
    let ca = TestCa::new("webhook-ca");
    let leaf = ca.issue_without_spiffe(SERVICE_DNS);
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let bad_config = dir.path().join("injector.yaml");
    std::fs::write(&bad_config, "uid: 0\n").unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.issue_without_spiffe("x").key_pem).unwrap();
    for (extra, says) in [
        (
            vec![("SHOAL_CP_WEBHOOK_KEY_FILE", key.display().to_string())],
            "SHOAL_CP_WEBHOOK_CERT_FILE",
        ),
        (
            vec![
                ("SHOAL_CP_WEBHOOK_CERT_FILE", cert.display().to_string()),
                ("SHOAL_CP_WEBHOOK_KEY_FILE", key.display().to_string()),
                (
                    "SHOAL_CP_INJECTOR_CONFIG_FILE",
                    bad_config.display().to_string(),
                ),
            ],
            "SHOAL_CP_INJECTOR_CONFIG_FILE",
        ),
        (
            vec![
                ("SHOAL_CP_WEBHOOK_CERT_FILE", cert.display().to_string()),
                ("SHOAL_CP_WEBHOOK_KEY_FILE", other_key.display().to_string()),
            ],
            "does not match the certificate",
        ),
    ] {
        let mut builder = ControlPlaneBuilder::new()
            .env("SHOAL_CP_WEBHOOK_ADDR", "127.0.0.1:0")
            .ready_timeout(Duration::from_secs(5));
        for (k, v) in &extra {
            builder = builder.env(k, v);
        }
        let error = match builder.try_start().await {
            Ok(_) => panic!("started with {extra:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(says), "{extra:?}: {error}");
    }
}

#[tokio::test]
async fn shoalctl_inject_rewrites_multi_document_manifests() {
    let dir = TempDir::new("shoalctl-inject").unwrap();
    let ca = TestCa::new("mesh");
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, ca.root_pem()).unwrap();
    let pod_spec = "    spec:\n      containers: [{name: app, image: 'app:1'}]\n";
    let input = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}, annotations: {{shoal.io/exclude-outbound-ports: '5432'}}}}\n{pod_spec}\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  ports: [{{port: 80, targetPort: 8080}}]\n\
         ---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: report}}\nspec:\n  schedule: '0 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{{name: report, image: 'report:1'}}]\n\
         ---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db, shoal.io/inject: disabled}}}}\n{pod_spec}"
    );
    let anchors_arg = anchors.display().to_string();
    // No control plane: everything it needs is given.
    let out = shoalctl(
        "http://127.0.0.1:1",
        &["inject", "-f", "-", "--trust-anchors", &anchors_arg],
        Some(&input),
    )
    .await
    .unwrap()
    .success();
    assert!(
        out.stderr
            .contains("StatefulSet db: not injected: shoal.io/inject=disabled"),
        "{}",
        out.stderr
    );
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 4);
    let template = &docs[0]["spec"]["template"];
    assert_eq!(
        init_container(template, "shoal-proxy")["restartPolicy"],
        "Always"
    );
    assert_eq!(
        env(
            init_container(template, "shoal-init"),
            "SHOAL_INIT_EXCLUDE_OUTBOUND_PORTS"
        ),
        "5432"
    );
    assert_eq!(
        template["metadata"]["annotations"]["shoal.io/trust-anchors"],
        ca.root_pem()
    );
    assert_eq!(docs[1]["kind"], "Service");
    assert_eq!(
        docs[1]["spec"],
        json!({"ports": [{"port": 80, "targetPort": 8080}]}),
        "passed through"
    );
    let cron = &docs[2]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        init_container(cron, "shoal-proxy")["restartPolicy"],
        "Always"
    );
    assert!(
        docs[3]["spec"]["template"]["spec"]
            .get("initContainers")
            .is_none(),
        "opted out"
    );
    for (i, doc) in docs.iter().enumerate() {
        validate(dir.path(), &format!("doc-{i}.json"), doc);
    }

    // The output is stable: injecting it again changes nothing.
    let again = shoalctl(
        "http://127.0.0.1:1",
        &["inject", "-f", "-", "--trust-anchors", &anchors_arg],
        Some(&out.stdout),
    )
    .await
    .unwrap()
    .success();
    assert_eq!(again.stdout, out.stdout);

    // A bad annotation: exit 2, nothing on stdout, the document and annotation named.
    let bad = input.replace("'5432'", "'5432,pg'");
    let refused = shoalctl(
        "http://127.0.0.1:1",
        &["inject", "-f", "-", "--trust-anchors", &anchors_arg],
        Some(&bad),
    )
    .await
    .unwrap();
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(refused.stdout.is_empty());
    assert!(
        refused
            .stderr
            .contains("document 1: Deployment web: annotation shoal.io/exclude-outbound-ports"),
        "{}",
        refused.stderr
    );
}

/// `helm template` of the chart with the injector enabled and `args`: the text and its documents.
fn helm_template(args: &[&str]) -> (String, Vec<Value>) {
    let args: Vec<&str> = ["--set", "injector.enabled=true"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    shoal_tests::helm::template(&args)
}

#[tokio::test]
async fn the_chart_wires_the_webhook_to_the_server_and_its_config_is_what_the_injector_reads() {
    let (rendered, docs) = helm_template(&[
        "--set",
        "injector.proxy.uid=2000",
        "--set",
        "injector.proxy.resources.limits.cpu=1",
        "--set",
        "injector.proxy.initImage.repository=registry.example/shoal-proxy-init",
    ]);
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} rendered"))
    };
    // The webhook configuration calls the port and path the control plane serves, for both webhooks.
    let hooks = find("MutatingWebhookConfiguration")["webhooks"]
        .as_array()
        .unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in hooks {
        assert_eq!(hook["clientConfig"]["service"]["port"], 15017);
        assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
        assert_eq!(hook["failurePolicy"], "Fail");
    }
    let container = &find("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let cp_env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["value"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for expected in [
        ("SHOAL_CP_WEBHOOK_ADDR", "0.0.0.0:15017"),
        (
            "SHOAL_CP_WEBHOOK_CERT_FILE",
            "/etc/shoal/webhook-tls/tls.crt",
        ),
        (
            "SHOAL_CP_WEBHOOK_KEY_FILE",
            "/etc/shoal/webhook-tls/tls.key",
        ),
        (
            "SHOAL_CP_INJECTOR_CONFIG_FILE",
            "/etc/shoal/injector/injector.yaml",
        ),
        // The audience the control plane checks is the one the injector requests the token for (below).
        ("SHOAL_CP_KUBERNETES_AUDIENCES", "shoal"),
    ] {
        assert!(
            cp_env.contains(&expected),
            "{expected:?} missing from {cp_env:?}"
        );
    }
    // The rendered configuration is accepted by the injector and reaches the sidecar.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "shoal-injector")
        .expect("the shoal-injector ConfigMap");
    let dir = TempDir::new("chart-injector").unwrap();
    let config_file = dir.path().join("injector.yaml");
    std::fs::write(
        &config_file,
        config["data"]["injector.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, TestCa::new("mesh").root_pem()).unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: web, image: 'web:1'}]}\n";
    let out = shoalctl(
        "http://127.0.0.1:1",
        &[
            "inject",
            "-f",
            "-",
            "--config",
            &config_file.display().to_string(),
            "--trust-anchors",
            &anchors.display().to_string(),
        ],
        Some(pod),
    )
    .await
    .unwrap()
    .success();
    let pod: Value = serde_yaml_ng::from_str(out.stdout.trim_start_matches("---\n")).unwrap();
    let proxy = init_container(&pod, "shoal-proxy");
    assert_eq!(
        proxy["image"],
        format!("shoal/shoal-proxy:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(proxy["securityContext"]["runAsUser"], 2000);
    assert_eq!(proxy["resources"]["limits"]["cpu"], "1");
    assert_eq!(env(proxy, "SHOAL_LOG_FORMAT"), "json");
    let token = (pod["spec"]["volumes"].as_array().unwrap().iter())
        .find(|v| v["name"] == "shoal-token")
        .expect("the projected token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "shoal", "expirationSeconds": 3600, "path": "token"})
    );
    let init = init_container(&pod, "shoal-init");
    assert_eq!(env(init, "SHOAL_INIT_PROXY_UID"), "2000");
    assert_eq!(
        init["image"],
        format!(
            "registry.example/shoal-proxy-init:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    validate(dir.path(), "chart-pod.json", &pod);

    // The chart's own output through `shoalctl inject`: accepted, and the control plane is not injected
    // (its pods are labelled shoal.io/inject=disabled: it serves the injector).
    let out = shoalctl(
        "http://127.0.0.1:1",
        &[
            "inject",
            "-f",
            "-",
            "--trust-anchors",
            &anchors.display().to_string(),
        ],
        Some(&rendered),
    )
    .await
    .unwrap()
    .success();
    assert!(
        out.stderr
            .contains("Deployment shoal-control-plane: not injected: shoal.io/inject=disabled"),
        "{}",
        out.stderr
    );
}

/// The injected sidecar's environment as the kubelet resolves it for a pod `name` in `namespace` running as
/// `service_account`: downward API fields filled in, `$(VAR)` references expanded.
fn resolved_env(
    container: &Value,
    name: &str,
    namespace: &str,
    service_account: &str,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().unwrap() {
        let key = var["name"].as_str().unwrap().to_owned();
        let value = match var["value"].as_str() {
            Some(value) => {
                let mut value = value.to_owned();
                for (k, v) in &out {
                    value = value.replace(&format!("$({k})"), v);
                }
                value
            }
            None => match var["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap() {
                "metadata.name" => name.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                "spec.serviceAccountName" => service_account.to_owned(),
                other => panic!("a field the test does not resolve: {other}"),
            },
        };
        out.push((key, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_sidecar_settings_start_a_proxy_that_verifies_and_reaches_the_control_plane() {
    // The control plane in Kubernetes mode, reviewing tokens at the fake API server, which knows the token
    // the kubelet would project for shop/web with the injected volume's audience.
    let kube = FakeKube::start("cp-token").await;
    let cp_dir = TempDir::new("webhook-kube").unwrap();
    let cp_token = cp_dir.path().join("cp-token");
    std::fs::write(&cp_token, kube.token()).unwrap();
    let hook = Webhook::start_with(&[
        ("SHOAL_CP_KUBERNETES", "true".to_owned()),
        ("SHOAL_CP_KUBERNETES_API_URL", kube.url()),
        (
            "SHOAL_CP_KUBERNETES_TOKEN_FILE",
            cp_token.display().to_string(),
        ),
    ])
    .await;
    let pod = web_pod(json!({}));
    let mut patched = pod.clone();
    apply_patch(
        &mut patched,
        &Webhook::patch(&hook.review("shop", &pod).await),
    )
    .unwrap();
    let proxy = init_container(&patched, "shoal-proxy");
    let env = resolved_env(proxy, "web-7d4b9c-x2x9z", "shop", "web");
    // What the downward API volume does: the annotation's content as the anchors file.
    let anchors = hook.dir.path().join("anchors.pem");
    let annotation = &patched["metadata"]["annotations"]["shoal.io/trust-anchors"];
    std::fs::write(&anchors, annotation.as_str().unwrap()).unwrap();
    // What the projected token volume does: a token for the audience it names, as a file.
    let token_volume = (patched["spec"]["volumes"].as_array().unwrap().iter())
        .find(|v| v["name"] == "shoal-token")
        .unwrap();
    let audience = token_volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
        .as_str()
        .unwrap();
    kube.token_reviews().register(
        "projected-web-token",
        "shop",
        "web",
        "web-7d4b9c-x2x9z",
        &[audience],
    );
    let token = hook.dir.path().join("token");
    std::fs::write(&token, "projected-web-token").unwrap();
    let mut builder = shoal_tests::ProxyBuilder::new()
        .inbound_transparent()
        .outbound_transparent();
    for (key, value) in &env {
        builder = match key.as_str() {
            // The Service's DNS name does not resolve here, and listeners bind free loopback ports.
            "SHOAL_DISCOVERY_ADDR" => builder.env(key, hook.cp.discovery_url()),
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE" => builder.env(key, anchors.display()),
            "SHOAL_IDENTITY_TOKEN_FILE" => builder.env(key, token.display()),
            "SHOAL_OUTBOUND_ADDR" | "SHOAL_INBOUND_ADDR" | "SHOAL_ADMIN_ADDR" => builder,
            // Everything else exactly as injected: the control plane's identity, the workload's
            // namespace, service account, proxy id, service name, log settings.
            _ => builder.env(key, value),
        };
    }
    // Ready means certified: the injected settings got the workload its service account's identity.
    let proxy = builder.start().await;
    assert_eq!(
        proxy.config().await["identity"]["spiffe_id"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    let id = "web-7d4b9c-x2x9z.shop";
    // mTLS: the proxy verified the control plane's certificate against the injected anchors and identity, and
    // presents its workload certificate on the discovery stream.
    let status = eventually(
        Duration::from_secs(15),
        "the proxy in shoalctl status over mTLS",
        || async {
            match hook.cp.proxy_status_json(id).await {
                Some(s) if s["transport"] == "MTLS" => Ok(s),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        status["verifiedIdentity"], "spiffe://cluster.local/ns/shop/sa/web",
        "{status}"
    );
    assert!(
        status.to_string().contains("shop"),
        "the workload's namespace: {status}"
    );
}
