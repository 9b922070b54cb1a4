use serde_json::{Value, json};

use super::annotations as a;
use super::*;

const ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn injector() -> Injector {
    Injector::new(Template::default(), &ControlPlaneRef::default()).unwrap()
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]},
    })
}

/// Injects and applies the patch; panics unless the pod was injected.
fn injected(pod: &Value) -> Value {
    match injector().inject(pod, Some("shop"), ANCHORS) {
        Ok(Outcome::Inject(ops)) => {
            let mut out = pod.clone();
            patch::apply(&mut out, &ops).unwrap();
            out
        }
        other => panic!("not injected: {other:?}"),
    }
}

fn denied(pod: &Value) -> String {
    match injector().inject(pod, Some("shop"), ANCHORS) {
        Err(Denied(message)) => message,
        other => panic!("not denied: {other:?}"),
    }
}

fn skip_reason(pod: &Value, namespace: &str) -> (String, Option<String>) {
    match injector().inject(pod, Some(namespace), ANCHORS) {
        Ok(Outcome::Skip { reason, warning }) => (reason, warning),
        other => panic!("not skipped: {other:?}"),
    }
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name} in {pod:#}"))
}

/// The plain value of an env variable of a container (`None`: absent).
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    let vars = container["env"].as_array().unwrap();
    vars.iter().find(|v| v["name"] == name).map(|v| {
        v.get("value")
            .unwrap_or_else(|| &v["valueFrom"]["fieldRef"]["fieldPath"])
    })
}

#[test]
fn a_pod_gets_the_init_container_and_the_native_sidecar_before_its_own_init_containers() {
    let mut p = pod(json!({}));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "tool"}]);
    let out = injected(&p);
    let names: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shoal-init", "shoal-proxy", "migrate"]);
    assert_eq!(
        out["spec"]["containers"], p["spec"]["containers"],
        "the app is untouched"
    );

    let proxy = container(&out, "shoal-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["args"], json!(["run"]));
    assert_eq!(
        proxy["image"],
        format!("shoal/shoal-proxy:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        container(&out, "shoal-init")["image"],
        format!("shoal/shoal-proxy-init:{}", env!("CARGO_PKG_VERSION")),
        "iptables is only in the init container's image"
    );
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15021})
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        proxy["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
    );
    for (name, value) in [
        (
            "SHOAL_DISCOVERY_ADDR",
            json!("https://shoal-control-plane.shoal-system.svc:15010"),
        ),
        (
            "SHOAL_CONTROL_PLANE_IDENTITY",
            json!("spiffe://cluster.local/ns/shoal-system/sa/shoal-control-plane"),
        ),
        (
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
            json!("/var/run/shoal/trust-anchors/anchors.pem"),
        ),
        ("SHOAL_NAMESPACE", json!("metadata.namespace")),
        ("SHOAL_SERVICE_ACCOUNT", json!("spec.serviceAccountName")),
        ("POD_NAME", json!("metadata.name")),
        ("SHOAL_PROXY_ID", json!("$(POD_NAME).$(SHOAL_NAMESPACE)")),
        ("SHOAL_SERVICE_NAME", json!("web")),
        ("SHOAL_OUTBOUND_ADDR", json!("127.0.0.1:15001")),
        ("SHOAL_INBOUND_ADDR", json!("0.0.0.0:15006")),
        ("SHOAL_ADMIN_ADDR", json!("0.0.0.0:15021")),
        ("SHOAL_LOG", json!("info")),
        ("SHOAL_LOG_FORMAT", json!("plain")),
        // Certified by the control plane's CA with the projected token below (TokenReview).
        (
            "SHOAL_IDENTITY_TOKEN_FILE",
            json!("/var/run/shoal/token/token"),
        ),
        ("SHOAL_IDENTITY_TOKEN_KIND", json!("kubernetes")),
    ] {
        assert_eq!(env(proxy, name), Some(&value), "{name}");
    }
    assert_eq!(
        env(proxy, "SHOAL_SERVER_FIRST_PORTS"),
        None,
        "the proxy's default list"
    );
    assert_eq!(
        proxy["volumeMounts"],
        json!([
            {"name": "shoal-trust-anchors", "mountPath": "/var/run/shoal/trust-anchors", "readOnly": true},
            {"name": "shoal-token", "mountPath": "/var/run/shoal/token", "readOnly": true},
        ])
    );

    let init = container(&out, "shoal-init");
    assert_eq!(init["args"], json!(["init"]));
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(init["securityContext"]["runAsNonRoot"], false);
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(
        init.get("restartPolicy"),
        None,
        "a plain init container: runs once, to completion"
    );
    for (name, value) in [
        ("SHOAL_INIT_PROXY_UID", "1337"),
        ("SHOAL_INIT_INBOUND_PORT", "15006"),
        ("SHOAL_INIT_OUTBOUND_PORT", "15001"),
        ("SHOAL_INIT_ADMIN_PORT", "15021"),
    ] {
        assert_eq!(env(init, name), Some(&json!(value)), "{name}");
    }
    assert_eq!(env(init, "SHOAL_INIT_EXCLUDE_INBOUND_PORTS"), None);

    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "shoal-trust-anchors", "downwardAPI": {"items": [{
            "path": "anchors.pem",
            "fieldRef": {"fieldPath": "metadata.annotations['shoal.io/trust-anchors']"},
        }]}}, {"name": "shoal-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "shoal", "expirationSeconds": 3600, "path": "token",
        }}]}}])
    );
    assert_eq!(
        out["metadata"]["annotations"],
        json!({
            "shoal.io/trust-anchors": ANCHORS,
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "15021",
            "prometheus.io/path": "/metrics",
        })
    );
}

#[test]
fn missing_lists_and_maps_are_created_whole() {
    let p = json!({"spec": {"containers": [{"name": "app", "image": "x"}]}});
    let Ok(Outcome::Inject(ops)) = injector().inject(&p, None, ANCHORS) else {
        panic!("not injected")
    };
    let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/spec/initContainers", "/spec/volumes", "/metadata"]
    );
    let mut out = p.clone();
    patch::apply(&mut out, &ops).unwrap();
    assert_eq!(
        out["metadata"]["annotations"]["shoal.io/trust-anchors"],
        ANCHORS
    );
    assert_eq!(
        env(container(&out, "shoal-proxy"), "SHOAL_SERVICE_NAME"),
        None,
        "no app label"
    );

    let mut p = pod(json!(null));
    p["metadata"].as_object_mut().unwrap().remove("annotations");
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let out = injected(&p);
    assert_eq!(out["spec"]["volumes"][0]["name"], "data");
    assert_eq!(out["spec"]["volumes"][1]["name"], "shoal-trust-anchors");
    assert_eq!(out["spec"]["volumes"][2]["name"], "shoal-token");
}

#[test]
fn re_injection_is_an_empty_patch() {
    let once = injected(&pod(json!({"shoal.io/proxy-log-level": "debug"})));
    let (reason, warning) = skip_reason(&once, "shop");
    assert_eq!(reason, "already injected");
    assert_eq!(warning, None);
}

#[test]
fn opt_out_and_skipped_pods() {
    let mut labelled = pod(json!({}));
    labelled["metadata"]["labels"]["shoal.io/inject"] = json!("disabled");
    assert_eq!(
        skip_reason(&labelled, "shop"),
        ("shoal.io/inject=disabled".to_owned(), None)
    );
    let annotated = pod(json!({"shoal.io/inject": "disabled"}));
    assert_eq!(
        skip_reason(&annotated, "shop").0,
        "shoal.io/inject=disabled"
    );
    // Opted out: the other annotations do not matter.
    let opted_out_bad =
        pod(json!({"shoal.io/inject": "disabled", "shoal.io/proxy-cpu-limit": "lots"}));
    assert_eq!(
        skip_reason(&opted_out_bad, "shop").0,
        "shoal.io/inject=disabled"
    );

    let (reason, warning) = skip_reason(&pod(json!({})), "kube-system");
    assert!(reason.contains("kube-system"), "{reason}");
    assert_eq!(warning, None, "nobody asked");
    let (_, warning) = skip_reason(&pod(json!({"shoal.io/inject": "enabled"})), "kube-system");
    assert!(warning.unwrap().contains("shoal.io/inject=enabled"));

    let mut host = pod(json!({"shoal.io/inject": "enabled"}));
    host["spec"]["hostNetwork"] = json!(true);
    let (reason, warning) = skip_reason(&host, "shop");
    assert!(reason.contains("host network"), "{reason}");
    assert!(warning.is_some());
    host["spec"]["hostNetwork"] = json!(false);
    injected(&host);

    // A pod's own "enabled" (label or annotation) is injected like a pod of an opted-in namespace.
    let mut enabled = pod(json!({}));
    enabled["metadata"]["labels"]["shoal.io/inject"] = json!("enabled");
    injected(&enabled);
}

#[test]
fn the_inject_switch_is_checked() {
    let message = denied(&pod(json!({"shoal.io/inject": "true"})));
    assert!(
        message.contains("annotation shoal.io/inject=\"true\""),
        "{message}"
    );
    assert!(message.contains("enabled or disabled"), "{message}");
    let mut p = pod(json!({"shoal.io/inject": "enabled"}));
    p["metadata"]["labels"]["shoal.io/inject"] = json!("disabled");
    let message = denied(&p);
    assert!(message.contains("disagree"), "{message}");
    p["metadata"]["labels"]["shoal.io/inject"] = json!("yes");
    assert!(denied(&p).contains("label shoal.io/inject"));
}

#[test]
fn every_annotation_reaches_its_setting() {
    let out = injected(&pod(json!({
        "shoal.io/exclude-inbound-ports": "22, 8443,22,",
        "shoal.io/exclude-outbound-ports": "5432",
        "shoal.io/exclude-outbound-cidrs": "169.254.169.254,10.0.0.0/8",
        "shoal.io/proxy-cpu-request": "100m",
        "shoal.io/proxy-cpu-limit": "1",
        "shoal.io/proxy-memory-request": "64Mi",
        "shoal.io/proxy-memory-limit": "256Mi",
        "shoal.io/proxy-log-level": "info,shoal_proxy=debug",
        "shoal.io/server-first-ports": "3306,9000",
    })));
    let init = container(&out, "shoal-init");
    assert_eq!(
        env(init, "SHOAL_INIT_EXCLUDE_INBOUND_PORTS"),
        Some(&json!("22,8443"))
    );
    assert_eq!(
        env(init, "SHOAL_INIT_EXCLUDE_OUTBOUND_PORTS"),
        Some(&json!("5432"))
    );
    assert_eq!(
        env(init, "SHOAL_INIT_EXCLUDE_OUTBOUND_CIDRS"),
        Some(&json!("169.254.169.254,10.0.0.0/8"))
    );
    let proxy = container(&out, "shoal-proxy");
    let resources = json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}});
    assert_eq!(proxy["resources"], resources);
    assert_eq!(
        init["resources"], resources,
        "the init container is sized like the proxy"
    );
    assert_eq!(
        env(proxy, "SHOAL_LOG"),
        Some(&json!("info,shoal_proxy=debug"))
    );
    assert_eq!(
        env(proxy, "SHOAL_SERVER_FIRST_PORTS"),
        Some(&json!("3306,9000"))
    );
    // An empty exclusion list is "none", as for the init flag.
    let out = injected(&pod(json!({"shoal.io/exclude-inbound-ports": ""})));
    assert_eq!(
        env(
            container(&out, "shoal-init"),
            "SHOAL_INIT_EXCLUDE_INBOUND_PORTS"
        ),
        Some(&json!(""))
    );
}

#[test]
fn a_bad_annotation_value_is_refused_naming_it() {
    for (key, value, says) in [
        (
            a::EXCLUDE_INBOUND_PORTS,
            json!("22,ssh"),
            "`ssh` is not a port",
        ),
        (a::EXCLUDE_INBOUND_PORTS, json!("0"), "`0` is not a port"),
        (
            a::EXCLUDE_OUTBOUND_PORTS,
            json!("70000"),
            "`70000` is not a port",
        ),
        (a::EXCLUDE_OUTBOUND_PORTS, json!(5432), "expected a string"),
        (
            a::EXCLUDE_OUTBOUND_CIDRS,
            json!("10.0.0.0/33"),
            "invalid prefix length",
        ),
        (
            a::EXCLUDE_OUTBOUND_CIDRS,
            json!("10.0.0"),
            "not an address range",
        ),
        (a::EXCLUDE_OUTBOUND_CIDRS, json!("fd00::/8"), "IPv6"),
        (a::PROXY_CPU_REQUEST, json!("lots"), "quantity"),
        (a::PROXY_CPU_LIMIT, json!("-1"), "quantity"),
        (a::PROXY_MEMORY_REQUEST, json!("64MB"), "quantity"),
        (a::PROXY_MEMORY_LIMIT, json!(""), "quantity"),
        (a::PROXY_LOG_LEVEL, json!("info,=[bad"), "log filter"),
        (a::PROXY_LOG_LEVEL, json!(" "), "log filter"),
        (a::SERVER_FIRST_PORTS, json!(""), "at least one port"),
        (
            a::SERVER_FIRST_PORTS,
            json!("mysql"),
            "`mysql` is not a port",
        ),
    ] {
        let message = denied(&pod(json!({ key: value })));
        assert!(
            message.contains(&format!("annotation {key}")),
            "{key}: {message}"
        );
        assert!(message.contains(says), "{key}={value}: {message}");
    }
}

#[test]
fn an_unknown_shoal_annotation_is_refused_as_a_typo() {
    let message = denied(&pod(json!({"shoal.io/exclude-inbound-port": "22"})));
    assert!(
        message.contains("unknown annotation shoal.io/exclude-inbound-port"),
        "{message}"
    );
    assert!(
        message.contains(a::EXCLUDE_INBOUND_PORTS),
        "lists the real ones: {message}"
    );
    // Other prefixes are not the injector's business.
    injected(&pod(json!({"example.com/exclude-inbound-port": "x"})));
}

#[test]
fn a_request_above_its_limit_is_refused_naming_the_annotation() {
    let message = denied(&pod(json!({"shoal.io/proxy-memory-request": "256Mi"})));
    assert!(
        message.contains("annotation shoal.io/proxy-memory-request"),
        "{message}"
    );
    assert!(
        message.contains("set shoal.io/proxy-memory-limit too"),
        "{message}"
    );
    let message = denied(&pod(json!({
        "shoal.io/proxy-cpu-request": "2",
        "shoal.io/proxy-cpu-limit": "500m",
    })));
    assert!(
        message.contains("annotation shoal.io/proxy-cpu-limit"),
        "{message}"
    );
    // Equal is fine; a limit raised with the request is fine.
    injected(&pod(
        json!({"shoal.io/proxy-memory-request": "256Mi", "shoal.io/proxy-memory-limit": "256Mi"}),
    ));
}

#[test]
fn the_apps_own_scrape_annotations_win() {
    let out = injected(&pod(json!({"prometheus.io/port": "8080"})));
    let annotations = out["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert!(!annotations.contains_key("prometheus.io/scrape"));
    assert_eq!(annotations[a::TRUST_ANCHORS], ANCHORS);
}

#[test]
fn names_the_injector_needs_are_not_taken_silently() {
    let mut p = pod(json!({}));
    p["spec"]["containers"][0]["name"] = json!("shoal-proxy");
    assert!(denied(&p).contains("container named shoal-proxy"));
    let mut p = pod(json!({}));
    p["spec"]["volumes"] = json!([{"name": "shoal-trust-anchors", "emptyDir": {}}]);
    assert!(denied(&p).contains("volume named shoal-trust-anchors"));
    let mut p = pod(json!({}));
    p["spec"]["volumes"] = json!([{"name": "shoal-token", "emptyDir": {}}]);
    assert!(denied(&p).contains("volume named shoal-token"));
}

#[test]
fn the_template_is_checked_and_applied() {
    let template = Template::from_yaml(
        "image: registry.example/shoal-proxy:1\ninit_image: registry.example/shoal-proxy-init:1\n\
         image_pull_policy: Always\nuid: 2000\n\
         ports: {outbound: 16001, inbound: 16006, admin: 16021}\nlog_format: json\n\
         resources: {requests: {cpu: 50m}, limits: {}}\n\
         discovery_addr: https://cp.mesh.svc:15010\nscrape_annotations: false\n\
         token_audience: mesh\ntoken_expiration_seconds: 7200\n",
    )
    .unwrap();
    let cp = ControlPlaneRef {
        namespace: "mesh".into(),
        trust_domain: "example.org".into(),
    };
    let injector = Injector::new(template, &cp).unwrap();
    let Ok(Outcome::Inject(ops)) = injector.inject(&pod(json!({})), Some("shop"), ANCHORS) else {
        panic!("not injected")
    };
    let mut out = pod(json!({}));
    patch::apply(&mut out, &ops).unwrap();
    let proxy = container(&out, "shoal-proxy");
    assert_eq!(proxy["image"], "registry.example/shoal-proxy:1");
    assert_eq!(proxy["imagePullPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2000);
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 16021);
    assert_eq!(proxy["resources"], json!({"requests": {"cpu": "50m"}}));
    assert_eq!(
        env(proxy, "SHOAL_DISCOVERY_ADDR"),
        Some(&json!("https://cp.mesh.svc:15010"))
    );
    assert_eq!(
        env(proxy, "SHOAL_CONTROL_PLANE_IDENTITY"),
        Some(&json!(
            "spiffe://example.org/ns/mesh/sa/shoal-control-plane"
        ))
    );
    assert_eq!(env(proxy, "SHOAL_LOG_FORMAT"), Some(&json!("json")));
    assert_eq!(
        env(proxy, "SHOAL_OUTBOUND_ADDR"),
        Some(&json!("127.0.0.1:16001"))
    );
    let token = (out["spec"]["volumes"].as_array().unwrap().iter())
        .find(|v| v["name"] == "shoal-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "mesh", "expirationSeconds": 7200, "path": "token"})
    );
    let init = container(&out, "shoal-init");
    assert_eq!(init["image"], "registry.example/shoal-proxy-init:1");
    assert_eq!(init["imagePullPolicy"], "Always");
    assert_eq!(env(init, "SHOAL_INIT_PROXY_UID"), Some(&json!("2000")));
    assert_eq!(env(init, "SHOAL_INIT_ADMIN_PORT"), Some(&json!("16021")));
    assert!(
        !out["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .contains_key("prometheus.io/scrape")
    );

    let bad = |yaml: &str| {
        let template = Template::from_yaml(yaml)?;
        Injector::new(template, &cp).map(drop)
    };
    for (yaml, field) in [
        ("imagePullPolicy: Always", "unknown field `imagePullPolicy`"),
        ("image_pull_policy: Sometimes", "image_pull_policy"),
        ("image: ''", "image \"\""),
        ("init_image: 'a b'", "init_image \"a b\""),
        ("uid: 0", "uid 0"),
        (
            "ports: {admin: 15001}",
            "ports.outbound 15001: the same port as ports.admin",
        ),
        ("log_level: 'info,=['", "log_level"),
        ("log_format: xml", "log_format"),
        (
            "resources: {requests: {memory: lots}}",
            "resources.requests.memory",
        ),
        (
            "resources: {requests: {memory: 1Gi}, limits: {memory: 512Mi}}",
            "resources.requests.memory 1Gi is more than",
        ),
        ("discovery_addr: shoal-control-plane", "discovery_addr"),
        ("control_plane_identity: cp", "control_plane_identity"),
        ("token_audience: ''", "token_audience"),
        ("token_audience: 'a b'", "token_audience"),
        (
            "token_expiration_seconds: 599",
            "token_expiration_seconds 599",
        ),
    ] {
        let error = bad(yaml).err().unwrap_or_else(|| panic!("{yaml} accepted"));
        assert!(error.contains(field), "{yaml}: {error}");
    }
    assert_eq!(Template::from_yaml("").unwrap(), Template::default());
}
