//! Property tests (proptest, stable toolchain) of the discovery conversion: pushes of services,
//! endpoints and routes whose fields come from hostile vocabularies (bad ports, addresses,
//! regexes, identities, names), applied one after another, and arbitrary bytes decoded as a
//! response. The proxy never panics, every push is answered (applied, or rejected naming the
//! resource), and the state it holds always builds: one bad push never costs it its last good state.

use proptest::prelude::*;
use prost::Message;
use shoal_proto::v1::{self, ResourceType, discovery_resource::Payload};

use super::{Resources, describe, key_of};

const SERVICES: &[&str] = &[
    "web.default",
    "api.default",
    "web.other",
    "ghost.default",
    "",
    ".",
    "a..b",
];
const PORTS: &[u32] = &[0, 1, 80, 8080, 65_535, 65_536, u32::MAX];
const ADDRESSES: &[&str] = &[
    "127.0.0.1",
    "::1",
    "10.0.0.1",
    "",
    "not-an-ip",
    "1.2.3.4:80",
    "300.1.1.1",
];
const IDENTITIES: &[&str] = &[
    "",
    "spiffe://cluster.local/ns/default/sa/web",
    "spiffe://cluster.local/web",
    "https://x",
    "spiffe://",
];
const PATTERNS: &[&str] = &["/api", "", "((", "^/v[0-9]+$", "[", "*"];
const HOSTS: &[&str] = &["web", "api.example", "", "WEB", "web:80", "bad host"];

fn pick<T: Clone + std::fmt::Debug + 'static>(from: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(from)
}

fn service() -> impl Strategy<Value = Payload> {
    (
        pick(SERVICES),
        prop::collection::vec((pick(PORTS), pick(PORTS), 0i32..6), 0..3),
        prop::collection::vec(pick(HOSTS), 0..2),
        prop::collection::vec(pick(ADDRESSES), 0..2),
    )
        .prop_map(|(qualified, ports, hosts, vips)| {
            let (name, namespace) = qualified.split_once('.').unwrap_or((qualified, ""));
            Payload::Service(v1::Service {
                name: name.into(),
                namespace: namespace.into(),
                ports: ports
                    .into_iter()
                    .map(|(port, target_port, protocol)| v1::ServicePort {
                        port,
                        target_port,
                        protocol,
                        ..Default::default()
                    })
                    .collect(),
                hosts: hosts.into_iter().map(str::to_string).collect(),
                virtual_addresses: vips.into_iter().map(str::to_string).collect(),
                ..Default::default()
            })
        })
}

fn endpoints() -> impl Strategy<Value = Payload> {
    (
        pick(SERVICES),
        prop::collection::vec(
            (
                pick(ADDRESSES),
                pick(PORTS),
                any::<u32>(),
                pick(IDENTITIES),
                any::<bool>(),
            ),
            0..4,
        ),
    )
        .prop_map(|(service, eps)| {
            Payload::Endpoints(v1::Endpoints {
                service: service.into(),
                endpoints: eps
                    .into_iter()
                    .map(|(address, port, weight, identity, ready)| v1::Endpoint {
                        address: address.into(),
                        port,
                        weight,
                        identity: identity.into(),
                        ready,
                        ..Default::default()
                    })
                    .collect(),
            })
        })
}

fn route() -> impl Strategy<Value = Payload> {
    (
        pick(SERVICES),
        prop::collection::vec(
            (
                pick(PATTERNS),
                pick(PATTERNS),
                prop::collection::vec((pick(SERVICES), any::<u32>()), 0..3),
                any::<u64>(),
            ),
            0..3,
        ),
    )
        .prop_map(|(parent, rules)| {
            Payload::Route(v1::Route {
                parent_service: parent.into(),
                rules: rules
                    .into_iter()
                    .map(|(prefix, regex, backends, timeout_ms)| v1::RouteRule {
                        matches: vec![v1::RouteMatch {
                            path: Some(v1::PathMatch {
                                kind: Some(v1::path_match::Kind::Prefix(prefix.into())),
                            }),
                            headers: vec![v1::HeaderMatch {
                                name: "x-canary".into(),
                                value: Some(v1::header_match::Value::Regex(regex.into())),
                            }],
                            method: String::new(),
                        }],
                        backends: backends
                            .into_iter()
                            .map(|(service, weight)| v1::WeightedBackend {
                                service: service.into(),
                                port: 0,
                                weight,
                            })
                            .collect(),
                        timeout_ms,
                        ..Default::default()
                    })
                    .collect(),
            })
        })
}

fn resource() -> impl Strategy<Value = v1::DiscoveryResource> {
    prop_oneof![
        service().prop_map(|p| (ResourceType::Service, p)),
        endpoints().prop_map(|p| (ResourceType::Endpoints, p)),
        route().prop_map(|p| (ResourceType::Route, p)),
    ]
    .prop_map(|(t, payload)| {
        let name = match &payload {
            Payload::Service(s) => format!("{}.{}", s.name, s.namespace),
            Payload::Endpoints(e) => e.service.clone(),
            Payload::Route(r) => r.parent_service.clone(),
            _ => String::new(),
        };
        v1::DiscoveryResource {
            key: Some(v1::ResourceKey {
                r#type: t as i32,
                name,
            }),
            version: "1".into(),
            payload: Some(payload),
        }
    })
}

fn push() -> impl Strategy<Value = v1::DiscoveryResponse> {
    prop::collection::vec(resource(), 0..6).prop_map(|resources| v1::DiscoveryResponse {
        nonce: "n".into(),
        resources,
        ..Default::default()
    })
}

proptest! {
    #[test]
    fn hostile_pushes_are_answered_and_the_held_state_always_builds(pushes in prop::collection::vec(push(), 1..5)) {
        let mut held = Resources::default();
        for push in &pushes {
            let update = held.update(push).map_err(|e| TestCaseError::fail(format!("the held state stopped building: {e}")))?;
            for r in &update.rejected {
                prop_assert!(r.error.starts_with(&describe(&r.key)), "a rejection that does not name its resource: {}", r.error);
            }
            for r in &push.resources {
                let key = key_of(r.key.as_ref().unwrap());
                prop_assert!(update.answered.contains(&key), "{key:?} was not answered");
            }
            held = update.next;
        }
    }

    #[test]
    fn arbitrary_bytes_decoded_as_a_push_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(push) = v1::DiscoveryResponse::decode(bytes.as_slice()) {
            let _ = Resources::default().update(&push);
        }
    }
}
