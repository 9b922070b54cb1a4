//! `Watch`: events in version order; versions outside the kept history are OUT_OF_RANGE.

use std::time::Duration;

use shoal_control_plane::store::StoreOptions;
use shoal_proto::v1::{self, ResourceKind, WatchEventType};
use tonic::Code;

use super::harness::*;

#[tokio::test]
async fn watch_reports_added_modified_deleted_in_order() {
    let mut h = start().await;
    let apply = |r| v1::ApplyRequest { resource: Some(r) };
    h.client
        .apply(apply(service("frontend", 80)))
        .await
        .expect("apply");
    let request = v1::WatchRequest {
        kind: ResourceKind::Service.into(),
        ..Default::default()
    };
    let mut events = h.client.watch(request).await.expect("watch").into_inner();
    let mut next = async || {
        let event = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
        let event = event
            .expect("an event within 5 s")
            .expect("stream ok")
            .expect("stream open");
        let name = event
            .resource
            .as_ref()
            .and_then(|r| r.metadata.as_ref())
            .map(|m| m.name.clone());
        (
            event.r#type(),
            name.unwrap_or_default(),
            version(event.resource.as_ref()),
        )
    };
    assert_eq!(
        next().await.0,
        WatchEventType::Added,
        "existing resources come first, as ADDED"
    );

    // One write at a time: the feed coalesces rapid writes to one resource into its latest state.
    let created = h
        .client
        .apply(apply(service("backend", 80)))
        .await
        .expect("apply")
        .into_inner();
    let (kind, name, added_at) = next().await;
    assert_eq!((kind, name.as_str()), (WatchEventType::Added, "backend"));
    assert_eq!(added_at, version(created.resource.as_ref()));
    h.client
        .apply(apply(route_to("backend", "backend")))
        .await
        .expect("a route, filtered out");
    h.client
        .apply(apply(service("backend", 81)))
        .await
        .expect("apply");
    let (kind, _, modified_at) = next().await;
    assert_eq!(kind, WatchEventType::Modified);
    assert!(modified_at > added_at);
    let delete = v1::DeleteRequest {
        kind: ResourceKind::Service.into(),
        name: "backend".to_owned(),
        ..Default::default()
    };
    let deleted = h.client.delete(delete).await.expect("delete").into_inner();
    let (kind, name, deleted_at) = next().await;
    assert_eq!((kind, name.as_str()), (WatchEventType::Deleted, "backend"));
    assert_eq!(
        deleted_at, deleted.deleted_at_version,
        "a deletion carries the deletion's version"
    );

    let ahead = v1::WatchRequest {
        from_version: 10_000,
        ..Default::default()
    };
    let status = h.client.watch(ahead).await.unwrap_err();
    assert_status(&status, Code::OutOfRange, &["list again"]);
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_out_of_range() {
    let mut h = start_with(StoreOptions {
        tombstone_retention: 1,
    })
    .await;
    let apply = |r| v1::ApplyRequest { resource: Some(r) };
    for name in ["a", "b", "c"] {
        h.client
            .apply(apply(service(name, 80)))
            .await
            .expect("apply");
        let delete = v1::DeleteRequest {
            kind: ResourceKind::Service.into(),
            name: name.to_owned(),
            ..Default::default()
        };
        h.client.delete(delete).await.expect("delete");
    }
    let status = h
        .client
        .watch(v1::WatchRequest {
            from_version: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::OutOfRange, &["no longer kept"]);
}

#[tokio::test]
async fn close_ends_open_watches() {
    let mut h = start().await;
    let request = v1::WatchRequest::default();
    let mut events = h.client.watch(request).await.expect("watch").into_inner();
    h.admin.close();
    let end = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
    let end = end.expect("the stream ends within 5 s of close()");
    assert!(matches!(end, Ok(None)), "a clean end of stream: {end:?}");
}
