//! Store behaviour: CRUD, optimistic concurrency, validation, concurrent writers, the data file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::model::fixtures::{backend, resource, service_resource, svc};
use crate::model::{Route, RouteRule, Spec};

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-store-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub(super) fn db(&self) -> PathBuf {
        self.0.join("store.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn service_key(name: &str) -> ResourceKey {
    ResourceKey::new(ResourceKind::Service, "default", name)
}

/// A route of `parent` sending everything to `to`.
fn route(parent: &str, to: &str) -> Resource {
    let rule = RouteRule {
        name: String::new(),
        matches: Vec::new(),
        backends: vec![backend(to, 1)],
        timeout: None,
        retry: None,
        request_headers: None,
        response_headers: None,
        redirect: None,
    };
    let spec = Spec::Route(Route {
        parent: svc(parent),
        rules: vec![rule],
    });
    resource(parent, "default", spec)
}

#[test]
fn crud_with_store_wide_versions() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    assert_eq!(store.revision(), 0);

    let a = store.create(service_resource("a")).expect("create a");
    let b = store.apply(service_resource("b"), None).expect("apply b");
    assert_eq!((a.version(), b.version()), (1, 2));
    assert!(a.created() && b.created());

    let mut changed = service_resource("a");
    changed.metadata.labels.insert("tier".into(), "web".into());
    let a2 = store.apply(changed, Some(1)).expect("replace a");
    assert_eq!(
        (a2.version(), a2.created_version, a2.created()),
        (3, 1, false)
    );
    assert_eq!(store.get(&service_key("a")), Some(a2.clone()));

    let listing = store.list(Some(ResourceKind::Service), Some("default"));
    assert_eq!(listing.revision, 3);
    let names: Vec<_> = listing
        .resources
        .iter()
        .map(|s| s.resource.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(store.list(None, Some("other")).resources.is_empty());

    let tombstone = store.delete(&service_key("b"), None).expect("delete b");
    assert_eq!(tombstone.deleted_version, 4);
    assert_eq!(tombstone.resource.version(), 2, "as it was before deletion");
    assert_eq!(store.get(&service_key("b")), None);
    assert_eq!(store.list(None, None).resources.len(), 1);
}

#[test]
fn create_refuses_an_existing_resource() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    store.create(service_resource("a")).expect("create");
    let error = store.create(service_resource("a")).expect_err("exists");
    assert!(
        matches!(error, Error::AlreadyExists { version: 1, .. }),
        "{error}"
    );
    assert_eq!(store.revision(), 1);
}

#[test]
fn optimistic_concurrency_names_both_versions() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    store.create(service_resource("a")).expect("create");
    let mut changed = service_resource("a");
    (changed.metadata.labels).insert("rev".to_owned(), "2".to_owned());
    store.apply(changed, None).expect("overwrite");

    let error = store
        .apply(service_resource("a"), Some(1))
        .expect_err("stale");
    assert!(
        matches!(
            error,
            Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "service a.default is at version 2, not the expected 1: it changed since it was read; read it again and retry"
    );
    let error = store
        .delete(&service_key("a"), Some(1))
        .expect_err("stale delete");
    assert!(
        matches!(
            error,
            Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{error}"
    );
    let error = store
        .apply(service_resource("zz"), Some(1))
        .expect_err("missing");
    assert!(matches!(error, Error::NotFound { .. }), "{error}");
    let error = store.delete(&service_key("zz"), None).expect_err("missing");
    assert_eq!(error.to_string(), "service zz.default not found");

    store
        .delete(&service_key("a"), Some(2))
        .expect("delete at the expected version");
    assert_eq!(store.revision(), 3);
}

#[test]
fn invalid_resources_are_never_stored() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    store.create(service_resource("backend")).expect("service");

    let error = store
        .apply(route("backend", "shadow"), None)
        .expect_err("unknown service");
    assert!(matches!(error, Error::Invalid(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains("spec.rules[0].backends[0].service: unknown service shadow.default"),
        "{error}"
    );
    assert_eq!(store.revision(), 1, "nothing written");
    assert!(
        store
            .list(Some(ResourceKind::Route), None)
            .resources
            .is_empty()
    );

    store.create(service_resource("shadow")).expect("service");
    store
        .apply(route("backend", "shadow"), None)
        .expect("now valid");
}

#[test]
fn an_invalid_resource_is_refused_and_never_stored() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    for name in ["backend", "shadow"] {
        store.create(service_resource(name)).expect("service");
    }
    let mut ported = route("backend", "shadow");
    if let Spec::Route(r) = &mut ported.spec {
        r.rules[0].backends[0].port = Some(9999);
    }
    let error = store
        .apply(ported, None)
        .expect_err("the backend has no port 9999");
    assert!(
        error
            .to_string()
            .contains("route backend.default: spec.rules[0].backends[0].port: "),
        "{error}"
    );
    assert!(error.to_string().contains("has no port 9999"), "{error}");
    assert_eq!(store.revision(), 2, "nothing written");
    assert_eq!(store.list(None, None).resources.len(), 2);
}

/// `service_resource(name)` that also answers to `host`.
fn hosted(name: &str, host: &str) -> Resource {
    let mut resource = service_resource(name);
    if let Spec::Service(s) = &mut resource.spec {
        s.hosts.push(host.to_owned());
    }
    resource
}

#[test]
fn a_host_is_claimed_by_one_service_until_it_lets_go() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    store
        .create(hosted("alpha", "shop.example"))
        .expect("alpha");
    let error = store
        .apply(hosted("beta", "shop.example"), None)
        .expect_err("beta claims alpha's host");
    assert!(matches!(error, Error::Invalid(_)), "{error}");
    assert!(
        error.to_string().contains(
            "service beta.default: spec.hosts[1]: host \"shop.example\" is already used by service \"alpha\" (namespace default) on port 8080"
        ),
        "{error}"
    );
    assert_eq!(store.revision(), 1, "nothing written");
    // Alpha may be re-applied and changed: it does not conflict with itself.
    store
        .apply(hosted("alpha", "shop.example"), None)
        .expect("unchanged");
    let mut changed = hosted("alpha", "shop.example");
    if let Spec::Service(s) = &mut changed.spec {
        s.hosts.push("alpha.example".to_owned());
    }
    store.apply(changed, None).expect("alpha updated");
    // Once alpha is gone, the host is free.
    store.delete(&service_key("alpha"), None).expect("delete");
    store
        .apply(hosted("beta", "shop.example"), None)
        .expect("the host is free");
}

#[test]
fn a_service_has_at_most_one_policy_of_each_kind() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    for name in ["backend", "shadow"] {
        store.create(service_resource(name)).expect("service");
    }
    store
        .create(route("backend", "shadow"))
        .expect("first route");
    let mut second = route("backend", "shadow");
    second.metadata.name = "another".into();
    let error = store
        .create(second)
        .expect_err("second route of the same service");
    assert!(matches!(error, Error::TargetTaken { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("already has a route policy, route backend.default"),
        "{error}"
    );
    store
        .apply(route("backend", "shadow"), None)
        .expect("the same policy may be rewritten");
}

#[test]
fn concurrent_writers_get_unique_ordered_versions() {
    let dir = TempDir::new();
    let store = Store::open(dir.db()).expect("open");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        store
                            .create(service_resource(&format!("s{t}-{i}")))
                            .expect("create")
                            .version()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());
    assert_eq!(store.changes_since(0).expect("feed").changes.len(), 40);
}

#[test]
fn a_second_process_cannot_open_the_same_file() {
    let dir = TempDir::new();
    let _store = Store::open(dir.db()).expect("open");
    let error = Store::open(dir.db()).expect_err("locked");
    assert!(matches!(error, Error::Locked { .. }), "{error}");
    assert!(
        error.to_string().contains("another control plane"),
        "{error}"
    );
}

#[cfg(unix)]
#[test]
fn the_data_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let _store = Store::open(dir.db()).expect("open");
    let mode = std::fs::metadata(dir.db())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
