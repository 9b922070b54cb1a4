use super::*;

const GOOD: &str = "\
services:
  - service: web.default
    endpoints:
      - {address: 10.0.0.1, port: 8080, weight: 2, zone: a, ready: true}
      - address: 10.0.0.2
        port: 8080
        ready: false
        identity: spiffe://shoal.local/ns/default/sa/web
dns:
  - {service: payments.external, host: api.example.com, port: 443}
  - {service: payments.external, host: api-backup.example.com., port: 443, weight: 3, zone: b}
";

fn error(text: &str) -> String {
    EndpointsFile::parse(text).unwrap_err()
}

#[test]
fn reads_services_and_dns_with_defaults() {
    let file = EndpointsFile::parse(GOOD).unwrap();
    let web = &file.services["web.default"];
    assert_eq!(web.len(), 2);
    assert_eq!(web[0].address.to_string(), "10.0.0.1");
    assert_eq!(
        (web[0].port, web[0].weight, web[0].zone.as_str()),
        (8080, 2, "a")
    );
    assert!(web[0].ready && !web[1].ready);
    // Defaults: weight 1, no zone, no identity, every service port.
    assert_eq!((web[1].weight, web[1].zone.as_str()), (1, ""));
    assert_eq!(web[0].identity, None);
    assert_eq!(
        web[1].identity.as_deref(),
        Some("spiffe://shoal.local/ns/default/sa/web")
    );
    let payments = &file.dns["payments.external"];
    assert_eq!(payments.len(), 2);
    assert_eq!(
        (
            payments[0].host.as_str(),
            payments[0].port,
            payments[0].weight
        ),
        ("api.example.com", 443, 1)
    );
    assert_eq!((payments[1].weight, payments[1].zone.as_str()), (3, "b"));
    // A DNS endpoint is outside the mesh and always ready.
    let endpoint = payments[0].endpoint("192.0.2.1".parse().unwrap());
    assert!(endpoint.ready && endpoint.identity.is_none());

    // Only one of the two sections is fine; `services: []` empties the source.
    assert!(
        EndpointsFile::parse("services: []")
            .unwrap()
            .services
            .is_empty()
    );
}

#[test]
fn errors_name_the_field_and_the_line() {
    let e = error(
        "services:\n  - service: web.default\n    endpoints:\n      - {adress: 10.0.0.1, port: 80}\n",
    );
    assert!(e.contains("services[0].endpoints[0]"), "{e}");
    assert!(e.contains("unknown field `adress`"), "{e}");
    assert!(e.contains("line 4"), "{e}");

    let e = error(
        "services:\n  - service: web.default\n    endpoints:\n      - address: 10.0.0.1\n        port: 0\n",
    );
    assert!(e.contains("services[0].endpoints[0].port"), "{e}");
    assert!(e.contains("line 5"), "{e}");

    let e = error(
        "services:\n  - service: web.default\n    endpoints:\n      - {address: 10.0.0.300, port: 80}\n",
    );
    assert!(e.contains("services[0].endpoints[0].address"), "{e}");
    assert!(e.contains("line 4"), "{e}");

    let e = error("services:\n  - service: Web\n    endpoints: []\n");
    assert!(e.contains("services[0].service"), "{e}");
    assert!(e.contains("not a qualified service name"), "{e}");
    assert!(e.contains("line 2"), "{e}");

    let e = error(
        "services:\n  - service: web.default\n    endpoints:\n      - {address: 10.0.0.1, port: 80, identity: web}\n",
    );
    assert!(e.contains("services[0].endpoints[0].identity"), "{e}");
    assert!(e.contains("spiffe://"), "{e}");

    // Proxies refuse heavier endpoints, so the file may not carry them.
    let e = error(
        "services:\n  - service: web.default\n    endpoints:\n      - {address: 10.0.0.1, port: 80, weight: 1000001}\n",
    );
    assert_eq!(
        e,
        "services[0].endpoints[0].weight: 1000001 is more than the maximum, 1000000"
    );
    let e =
        error("dns:\n  - {service: pay.external, host: pay.example, port: 443, weight: 1000001}\n");
    assert_eq!(
        e,
        "dns[0].weight: 1000001 is more than the maximum, 1000000"
    );

    let e = error("services:\n  - service: web.default\n");
    assert!(
        e.contains("services[0]") && e.contains("missing field `endpoints`"),
        "{e}"
    );

    let e = error("dns:\n  - {service: pay.external, host: \"bad host\", port: 443}\n");
    assert!(e.contains("dns[0].host"), "{e}");
    assert!(e.contains("line 2"), "{e}");

    let e = error("servces: []\n");
    // The YAML parser gives no position for the top level; the field name says where.
    assert!(
        e.contains("unknown field `servces`, expected `services` or `dns`"),
        "{e}"
    );

    let e = error("services:\n  - service: web.default\n    endpoints: [\n");
    assert!(e.contains("line"), "a syntax error names the line: {e}");
}

#[test]
fn duplicates_and_empty_files_are_rejected() {
    let e = error(
        "services:\n  - {service: web.default, endpoints: []}\n  - {service: web.default, endpoints: []}\n",
    );
    assert!(e.contains("services[1].service"), "{e}");
    assert!(e.contains("listed twice (also services[0])"), "{e}");

    let e = error(
        "dns:\n  - {service: p.x, host: a.example, port: 1}\n  - {service: p.x, host: a.example, port: 1}\n",
    );
    assert!(e.starts_with("dns[1]: a.example:1 is listed twice"), "{e}");

    let e = error(
        "services:\n  - service: web.default\n    endpoints:\n      - {address: 10.0.0.1, port: 80}\n      - {address: 10.0.0.1, port: 80, weight: 5}\n",
    );
    assert!(
        e.starts_with("services[0].endpoints[1]: 10.0.0.1:80 is listed twice"),
        "{e}"
    );

    let e = error("  \n# nothing yet\n");
    assert!(e.contains("empty"), "{e}");
}
