//! The cases the proxy's discovery checks share with this validation (proto/testdata/pushed-resource-checks.txt):
//! the control plane refuses at `apply` everything a proxy would reject when the resource is pushed.

use shoal_proto::checks::{Verdict, cases};
use shoal_proto::v1::{self, discovery_resource::Payload};

use super::validate;
use crate::model::fixtures::{resource, service};
use crate::model::{AuthorizationPolicy, EndpointRegistration, Route, Service, Spec};

#[test]
fn what_a_proxy_rejects_is_refused_at_apply() {
    // web.default on port 80, as the cases describe it.
    let mut web = service("web");
    web.ports[0].port = 80;
    let catalog = vec![web];
    for case in cases() {
        let spec = match case.payload.clone() {
            Payload::Route(r) => Route::try_from(r).map(Spec::Route),
            Payload::Service(s) => Service::try_from(s).map(Spec::Service),
            Payload::AuthorizationPolicy(p) => {
                AuthorizationPolicy::try_from(p).map(Spec::AuthorizationPolicy)
            }
            // Endpoints come from registrations: the same fields, checked as a registration.
            Payload::Endpoints(e) => {
                let e = e.endpoints[0].clone();
                EndpointRegistration::try_from(v1::EndpointRegistration {
                    service: "web.default".to_owned(),
                    address: e.address,
                    port: e.port,
                    weight: e.weight,
                    identity: e.identity,
                    ..Default::default()
                })
                .map(Spec::EndpointRegistration)
            }
            other => panic!("{}: no check for {other:?}", case.line),
        };
        let verdict = spec.map_err(|e| e.to_string()).and_then(|spec| {
            validate(&resource("web", "default", spec), &catalog).map_err(|e| e.to_string())
        });
        let accepted = case.verdict == Verdict::Accept;
        assert_eq!(verdict.is_ok(), accepted, "{}: {verdict:?}", case.line);
    }
}
