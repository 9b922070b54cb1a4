use super::*;

fn policy(yaml: &str) -> Policy {
    let spec: PolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
    build(spec, "authorization[0]", "default").unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn http<'a>(
    client: Option<&'a SpiffeId>,
    port: u16,
    method: &'a Method,
    path: &'a str,
) -> Call<'a> {
    Call {
        client,
        local_trust_domain: Some("cluster.local"),
        port,
        http: Some((method, path)),
    }
}

fn tcp(client: Option<&SpiffeId>, port: u16) -> Call<'_> {
    Call {
        client,
        local_trust_domain: Some("cluster.local"),
        port,
        http: None,
    }
}

const POLICY: &str = r#"
service: web
default_action: deny
rules:
  - name: no-admin
    action: deny
    path_prefixes: [/admin]
  - name: frontend
    action: allow
    from: [{exact: "spiffe://cluster.local/ns/shop/sa/frontend"}]
    methods: [GET, POST]
  - name: ops
    action: allow
    from: [{namespace: ops}]
    to_ports: [9090]
  - name: partner
    action: allow
    from: [{trust_domain: partner.example}]
    path_prefixes: [/api]
"#;

#[test]
fn the_allow_deny_default_matrix() {
    let p = policy(POLICY);
    assert_eq!(p.service, "web.default");
    let frontend = id("spiffe://cluster.local/ns/shop/sa/frontend");
    let ops = id("spiffe://cluster.local/ns/ops/sa/anyone");
    let foreign_ops = id("spiffe://other.local/ns/ops/sa/anyone");
    let partner = id("spiffe://partner.example/ns/x/sa/y");
    let stranger = id("spiffe://cluster.local/ns/shop/sa/stranger");
    let (get, delete) = (Method::GET, Method::DELETE);
    let cases: &[(Call<'_>, Action, &str)] = &[
        (
            http(Some(&frontend), 80, &get, "/"),
            Action::Allow,
            "frontend",
        ),
        (
            http(Some(&frontend), 80, &delete, "/"),
            Action::Deny,
            "default",
        ),
        // A deny rule wins over any allow.
        (
            http(Some(&frontend), 80, &get, "/admin/x"),
            Action::Deny,
            "no-admin",
        ),
        (
            http(Some(&frontend), 80, &get, "/administrator"),
            Action::Allow,
            "frontend",
        ),
        (http(Some(&ops), 9090, &get, "/"), Action::Allow, "ops"),
        (http(Some(&ops), 80, &get, "/"), Action::Deny, "default"),
        // Namespace matches stay within the local trust domain.
        (
            http(Some(&foreign_ops), 9090, &get, "/"),
            Action::Deny,
            "default",
        ),
        (
            http(Some(&partner), 80, &get, "/api/v1"),
            Action::Allow,
            "partner",
        ),
        (
            http(Some(&partner), 80, &get, "/apiary"),
            Action::Deny,
            "default",
        ),
        (
            http(Some(&stranger), 80, &get, "/"),
            Action::Deny,
            "default",
        ),
        // Plain-text callers never match identity conditions.
        (http(None, 80, &get, "/"), Action::Deny, "default"),
        // Opaque connections: rules with paths or methods never match.
        (tcp(Some(&frontend), 80), Action::Deny, "default"),
        (tcp(Some(&ops), 9090), Action::Allow, "ops"),
    ];
    for (call, action, rule) in cases {
        let d = p.decide(call);
        assert_eq!((d.action, &*d.rule), (*action, *rule), "{call:?}");
    }
}

#[test]
fn default_allow_and_unnamed_rules() {
    let p = policy(
        "service: web.shop\ndefault_action: allow\nrules:\n  - action: deny\n    from: [{namespace: bad}]\n",
    );
    assert_eq!(p.service, "web.shop");
    let bad = id("spiffe://cluster.local/ns/bad/sa/x");
    let d = p.decide(&tcp(Some(&bad), 1));
    assert_eq!((d.action, &*d.rule), (Action::Deny, "rules[0]"));
    assert_eq!(p.decide(&tcp(None, 1)).action, Action::Allow);
}

#[test]
fn invalid_policies_name_the_field() {
    for (yaml, expected) in [
        (
            "service: web\ndefault_action: deny\nrules: [{action: allow, from: [{exact: \"not-a-spiffe-id\"}]}]",
            "rules[0].from[0].exact",
        ),
        (
            "service: web\ndefault_action: deny\nrules: [{action: allow, path_prefixes: [api]}]",
            "rules[0].path_prefixes",
        ),
        (
            "service: web\ndefault_action: deny\nrules: [{action: allow, methods: [\"G T\"]}]",
            "rules[0].methods",
        ),
        (
            "service: web\ndefault_action: deny\nrules: [{action: allow, to_ports: [0]}]",
            "rules[0].to_ports",
        ),
    ] {
        let spec: PolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
        let err = build(spec, "authorization[0]", "default").unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
}
