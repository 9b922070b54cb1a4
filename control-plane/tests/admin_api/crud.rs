//! Resource CRUD with optimistic concurrency, and errors that name the field.

use shoal_proto::v1::{self, ResourceKind, resource::Spec};
use tonic::Code;

use super::harness::*;

#[tokio::test]
async fn crud_with_optimistic_concurrency() {
    let mut h = start().await;
    let apply = |r| v1::ApplyRequest { resource: Some(r) };

    let first = h
        .client
        .apply(apply(service("backend", 8080)))
        .await
        .expect("apply")
        .into_inner();
    assert!(first.created);
    let v1_ = version(first.resource.as_ref());
    let again = h
        .client
        .apply(apply(service("backend", 8081)))
        .await
        .expect("apply")
        .into_inner();
    assert!(!again.created, "the second apply overwrites");
    let v2 = version(again.resource.as_ref());
    assert!(v2 > v1_, "versions grow: {v1_} then {v2}");

    let create = v1::CreateRequest {
        resource: Some(service("backend", 8080)),
    };
    let status = h.client.create(create).await.unwrap_err();
    assert_status(&status, Code::AlreadyExists, &["service backend.default"]);

    let got = h
        .client
        .get(get(ResourceKind::Service, "backend"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(version(got.resource.as_ref()), v2);
    let Some(Spec::Service(spec)) = got.resource.and_then(|r| r.spec) else {
        panic!("a service")
    };
    assert_eq!(spec.ports[0].port, 8081);
    assert_eq!(
        (spec.name.as_str(), spec.namespace.as_str()),
        ("backend", "default"),
        "filled in"
    );

    let stale = v1::ReplaceRequest {
        resource: Some(service("backend", 9000)),
        expected_resource_version: v1_,
    };
    let status = h.client.replace(stale).await.unwrap_err();
    assert_status(
        &status,
        Code::Aborted,
        &[&format!("version {v2}"), &format!("expected {v1_}")],
    );
    let fresh = v1::ReplaceRequest {
        resource: Some(service("backend", 9000)),
        expected_resource_version: v2,
    };
    let v3 = version(
        h.client
            .replace(fresh)
            .await
            .expect("replace")
            .into_inner()
            .resource
            .as_ref(),
    );
    assert!(v3 > v2);
    let unversioned = v1::ReplaceRequest {
        resource: Some(service("backend", 1)),
        expected_resource_version: 0,
    };
    let status = h.client.replace(unversioned).await.unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        &["expected_resource_version"],
    );

    let listed = (h
        .client
        .list(v1::ListRequest {
            kind: ResourceKind::Service.into(),
            ..Default::default()
        })
        .await)
        .expect("list")
        .into_inner();
    assert_eq!(listed.resources.len(), 1);
    assert_eq!(listed.version, v3, "the list reflects the latest write");

    let delete = |expected| v1::DeleteRequest {
        kind: ResourceKind::Service.into(),
        namespace: String::new(),
        name: "backend".to_owned(),
        expected_resource_version: expected,
    };
    let status = h.client.delete(delete(v2)).await.unwrap_err();
    assert_status(&status, Code::Aborted, &[&format!("version {v3}")]);
    let deleted = h
        .client
        .delete(delete(v3))
        .await
        .expect("delete")
        .into_inner();
    assert!(deleted.deleted_at_version > v3);
    let status = h
        .client
        .get(get(ResourceKind::Service, "backend"))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::NotFound,
        &["service backend.default not found"],
    );
    let status = h.client.delete(delete(0)).await.unwrap_err();
    assert_status(&status, Code::NotFound, &["backend.default"]);
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let mut h = start().await;
    let apply = |r| v1::ApplyRequest { resource: Some(r) };

    let status = h
        .client
        .apply(apply(route_to("frontend", "nowhere")))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        &["spec.rules[0].backends[0].service", "nowhere"],
    );
    let status = h
        .client
        .apply(apply(resource(
            "empty",
            Spec::Service(v1::Service::default()),
        )))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["spec.ports"]);
    let mut mismatched = service("backend", 80);
    mismatched.kind = ResourceKind::Route.into();
    let status = h.client.apply(apply(mismatched)).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["kind"]);
    let status = h
        .client
        .apply(v1::ApplyRequest { resource: None })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["resource: required"]);
    let status = h
        .client
        .get(get(ResourceKind::Unspecified, "x"))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["kind"]);
    let status = h
        .client
        .get(get(ResourceKind::Service, ""))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, &["name"]);

    h.client
        .apply(apply(service("backend", 80)))
        .await
        .expect("a valid service");
    h.client
        .apply(apply(route_to("backend", "backend")))
        .await
        .expect("a valid route");
    // A service answering to another service's name on the same port.
    let mut claims_backend = service("other", 80);
    if let Some(Spec::Service(s)) = &mut claims_backend.spec {
        s.hosts = vec!["backend".to_owned()];
    }
    let status = h.client.apply(apply(claims_backend)).await.unwrap_err();
    assert_status(
        &status,
        Code::InvalidArgument,
        &[
            "service other.default: spec.hosts[0]: host \"backend\" is already used by service \"backend\" (namespace default) on port 80",
        ],
    );
    let taken = resource(
        "other",
        Spec::Route(v1::Route {
            parent_service: "backend".to_owned(),
            rules: vec![v1::RouteRule::default()],
        }),
    );
    let status = h.client.apply(apply(taken)).await.unwrap_err();
    assert_status(&status, Code::AlreadyExists, &["route backend.default"]);

    let status = h
        .client
        .create_join_token(v1::CreateJoinTokenRequest::default())
        .await
        .unwrap_err();
    // This harness serves Admin without a CA (identity_*.rs test the one with it).
    assert_status(&status, Code::FailedPrecondition, &["without a CA"]);
    let status = h
        .client
        .ca_status(v1::CaStatusRequest::default())
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, &["without a CA"]);
    let proxies = h
        .client
        .status(v1::StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert!(proxies.proxies.is_empty(), "no discovery, no proxies");
}
