//! Store behaviour across reopen, and the change feed: tombstones, pruning, subscriptions.

use super::tests::{TempDir, service_key};
use super::*;
use crate::model::fixtures::{self, service_resource};

/// Service `name` with a label: a change (re-applying identical content writes nothing).
fn relabelled(name: &str) -> crate::model::Resource {
    let mut resource = service_resource(name);
    (resource.metadata.labels).insert("rev".to_owned(), "2".to_owned());
    resource
}

#[test]
fn re_applying_identical_content_writes_nothing() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    let mut feed = store.subscribe();
    let first = store.apply_outcome(service_resource("a"), None).expect("a");
    assert!(!first.unchanged && first.stored.created());
    feed.borrow_and_update();
    let again = store
        .apply_outcome(service_resource("a"), None)
        .expect("again");
    assert!(again.unchanged);
    assert_eq!(again.stored.version(), 1);
    assert_eq!(store.revision(), 1);
    assert!(!feed.has_changed().unwrap(), "nothing in the feed");
    // A label is content: written, with a new version.
    let label = store.apply_outcome(relabelled("a"), None).expect("label");
    assert!(!label.unchanged && !label.stored.created());
    assert_eq!(label.stored.version(), 2);
    // Replace with the expected version always writes.
    let replaced = store
        .apply_outcome(relabelled("a"), Some(2))
        .expect("replace");
    assert_eq!((replaced.unchanged, replaced.stored.version()), (false, 3));
}

#[test]
fn state_and_versions_survive_reopen() {
    let dir = TempDir::new();
    {
        let store = Store::open(dir.db()).expect("open");
        store.create(service_resource("a")).expect("a");
        store.create(service_resource("b")).expect("b");
        store.apply(relabelled("a"), None).expect("a again");
        store.delete(&service_key("b"), None).expect("delete b");
    }
    let store = Store::open(dir.db()).expect("reopen");
    assert_eq!(store.revision(), 4);
    let a = store.get(&service_key("a")).expect("a kept");
    assert_eq!((a.version(), a.created_version), (3, 1));
    assert_eq!(store.get(&service_key("b")), None, "deletion kept");
    let changes = store.changes_since(0).expect("feed");
    let deleted = changes
        .changes
        .iter()
        .find(|c| matches!(c, Change::Deleted(_)));
    assert_eq!(deleted.map(Change::version), Some(4), "tombstone kept");

    let c = store.create(service_resource("c")).expect("c");
    assert_eq!(c.version(), 5, "the counter continues");
}

#[test]
fn deleting_the_newest_write_keeps_the_counter_after_reopen() {
    let dir = TempDir::new();
    {
        let store = Store::open(dir.db()).expect("open");
        store.create(service_resource("a")).expect("a");
        store.delete(&service_key("a"), None).expect("delete");
    }
    let store = Store::open(dir.db()).expect("reopen");
    let again = store.create(service_resource("a")).expect("re-create");
    assert_eq!((again.version(), again.created()), (3, true));
}

#[test]
fn changes_since_reports_latest_states_and_deletions_in_order() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    for name in ["a", "b", "c"] {
        store.create(service_resource(name)).expect("create");
    }
    store.apply(relabelled("a"), None).expect("a again"); // 4
    store.delete(&service_key("b"), None).expect("delete b"); // 5

    let changes = store.changes_since(2).expect("feed");
    assert_eq!(changes.revision, 5);
    let seen: Vec<_> = changes
        .changes
        .iter()
        .map(|c| {
            (
                c.version(),
                c.resource().metadata.name.as_str(),
                matches!(c, Change::Deleted(_)),
            )
        })
        .collect();
    assert_eq!(seen, [(3, "c", false), (4, "a", false), (5, "b", true)]);
    assert!(
        store
            .changes_since(5)
            .expect("up to date")
            .changes
            .is_empty()
    );
    let error = store.changes_since(6).expect_err("ahead");
    assert!(
        matches!(
            error,
            Error::Ahead {
                requested: 6,
                revision: 5
            }
        ),
        "{error}"
    );
}

#[test]
fn old_tombstones_are_pruned_and_the_feed_says_so() {
    let dir = TempDir::new();
    let options = StoreOptions {
        tombstone_retention: 2,
    };
    let store = Store::open_with(dir.db(), options.clone()).expect("open");
    for name in ["a", "b", "c", "d"] {
        store.create(service_resource(name)).expect("create"); // 1–4
    }
    for name in ["a", "b", "c"] {
        store.delete(&service_key(name), None).expect("delete"); // 5–7
    }
    let error = store.changes_since(4).expect_err("pruned");
    assert!(
        matches!(
            error,
            Error::Compacted {
                requested: 4,
                compacted_through: 5
            }
        ),
        "{error}"
    );
    assert_eq!(store.changes_since(5).expect("kept").changes.len(), 2);
    drop(store);

    let store = Store::open_with(dir.db(), options).expect("reopen");
    assert!(matches!(
        store.changes_since(4),
        Err(Error::Compacted { .. })
    ));
    assert_eq!(store.changes_since(5).expect("kept").changes.len(), 2);
}

#[test]
fn every_kind_is_stored_and_read_back() {
    let dir = TempDir::new();
    let written: Vec<_> = {
        let store = Store::open(dir.db()).expect("open");
        let all = fixtures::every_kind().into_iter();
        all.map(|r| store.create(r).expect("create")).collect()
    };
    let store = Store::open(dir.db()).expect("reopen");
    assert_eq!(store.list(None, None).resources.len(), written.len());
    for stored in written {
        assert_eq!(store.get(&stored.key()), Some(stored));
    }
}

#[tokio::test]
async fn subscribers_are_told_of_every_write() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    let mut revisions = store.subscribe();
    assert_eq!(*revisions.borrow_and_update(), 0);
    let writer = store.clone();
    tokio::task::spawn_blocking(move || writer.create(service_resource("a")))
        .await
        .expect("join")
        .expect("create");
    revisions.changed().await.expect("store alive");
    let seen = *revisions.borrow_and_update();
    assert_eq!(seen, 1);
    let changes = store.changes_since(0).expect("feed");
    assert_eq!((changes.revision, changes.changes.len()), (seen, 1));
}
