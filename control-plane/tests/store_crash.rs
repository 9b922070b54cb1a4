//! `kill -9` during a burst of writes: every acknowledged write is present after restart, the store opens
//! cleanly, and versions keep growing across crashes.
//!
//! The test re-runs its own binary as the writer: with `SHOAL_STORE_CRASH_CHILD` set, the same test function
//! becomes a child that writes from two threads as fast as the disk allows and prints `ack ...` for each write
//! once `Store` has returned. The parent SIGKILLs it mid-burst, reopens the store and checks every line it read.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_control_plane::model::{
    Metadata, Protocol, Resource, ResourceKey, ResourceKind, Service, ServicePort, Spec,
};
use shoal_control_plane::store::{Change, Store};

const CHILD_ENV: &str = "SHOAL_STORE_CRASH_CHILD";
const TEST_NAME: &str = "kill_9_during_a_burst_of_writes_loses_nothing_acknowledged";
const ROUNDS: usize = 3;
/// Keys per writer thread: small, so keys are overwritten and deleted many times.
const KEYS: usize = 16;

#[test]
fn kill_9_during_a_burst_of_writes_loses_nothing_acknowledged() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        return write_until_killed(Path::new(&path));
    }
    let dir = TempDir::new();
    let path = dir.0.join("store.redb");
    let mut acked: HashMap<String, Ack> = HashMap::new();
    let mut revision_before = 0;
    for round in 0..ROUNDS {
        let kill_after = 100 + 37 * round;
        let round_acks = run_child_and_kill(&path, kill_after);
        assert!(
            round_acks.len() >= kill_after,
            "the child acknowledged writes"
        );
        let first = round_acks
            .iter()
            .map(|a| a.version)
            .min()
            .unwrap_or_default();
        assert!(
            first > revision_before,
            "round {round}: version {first} reused after a crash"
        );
        for ack in round_acks {
            let newer = acked
                .get(&ack.name)
                .is_none_or(|old| old.version < ack.version);
            if newer {
                acked.insert(ack.name.clone(), ack);
            }
        }

        let store = Store::open(&path).expect("the store opens cleanly after kill -9");
        let latest = latest_per_key(&store);
        for (name, ack) in &acked {
            let (version, state) = latest.get(name).unwrap_or_else(|| {
                panic!(
                    "acknowledged write to {name} (version {}) lost",
                    ack.version
                )
            });
            assert!(
                *version >= ack.version,
                "{name}: store has version {version}, acknowledged {}",
                ack.version
            );
            if *version == ack.version {
                assert_eq!(*state, ack.state, "{name} at version {version}");
            }
        }
        let max_acked = acked.values().map(|a| a.version).max().unwrap_or_default();
        assert!(store.revision() >= max_acked);
        revision_before = store.revision();
        let total = acked.len();
        eprintln!(
            "round {round}: killed after {kill_after} acks; {total} keys checked at revision {revision_before}"
        );
    }
    let store = Store::open(&path).expect("reopen");
    let next = store
        .create(service("after-the-crashes", 0))
        .expect("writable");
    assert_eq!(next.version(), revision_before + 1, "the counter continues");
}

/// What an acknowledged write left: the resource with its `seq` label, or a deletion.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Put(String),
    Deleted,
}

#[derive(Debug)]
struct Ack {
    name: String,
    version: u64,
    state: State,
}

/// Starts the writer, reads acknowledgements until `kill_after` of them, SIGKILLs it, and returns every
/// acknowledgement it printed (those still in the pipe included).
fn run_child_and_kill(path: &Path, kill_after: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acks = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the writer's output");
        if let Some(ack) = parse(&line) {
            acks.push(ack);
        }
        if !killed && acks.len() >= kill_after {
            child.kill().expect("SIGKILL the writer");
            killed = true;
        }
    }
    let status = child.wait().expect("reap the writer");
    assert_eq!(
        status.signal(),
        Some(9),
        "the writer died of SIGKILL, not {status}"
    );
    acks
}

fn parse(line: &str) -> Option<Ack> {
    let mut words = line.strip_prefix("ack ")?.split(' ');
    let (op, name, version) = (words.next()?, words.next()?, words.next()?);
    let state = match op {
        "put" => State::Put(words.next()?.to_owned()),
        _ => State::Deleted,
    };
    let version = version.parse().ok()?;
    Some(Ack {
        name: name.to_owned(),
        version,
        state,
    })
}

/// Each service's latest state in the store, tombstones included.
fn latest_per_key(store: &Store) -> BTreeMap<String, (u64, State)> {
    let changes = store.changes_since(0).expect("the full feed");
    let states = changes.changes.into_iter().map(|change| {
        let name = change.resource().metadata.name.clone();
        let state = match &change {
            Change::Put(stored) => State::Put(stored.resource.metadata.labels["seq"].clone()),
            Change::Deleted(_) => State::Deleted,
        };
        (name, (change.version(), state))
    });
    states.collect()
}

/// The child: two threads overwrite and delete their own keys in a loop, printing each acknowledged write,
/// until killed (or, should the parent be gone, for at most 30 s).
fn write_until_killed(path: &Path) {
    let store = Store::open(path).expect("child: open");
    let deadline = Instant::now() + Duration::from_secs(30);
    let writers: Vec<_> = (0..2)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0usize.. {
                    if Instant::now() > deadline {
                        return;
                    }
                    let name = format!("t{thread}-{}", i % KEYS);
                    let line = if i % 5 == 4 {
                        let key = ResourceKey::new(ResourceKind::Service, "default", &name);
                        match store.delete(&key, None) {
                            Ok(tombstone) => {
                                format!("ack del {name} {}", tombstone.deleted_version)
                            }
                            Err(_) => continue, // not there (deleted in an earlier lap)
                        }
                    } else {
                        let stored = store.apply(service(&name, i), None).expect("child: apply");
                        let seq = &stored.resource.metadata.labels["seq"];
                        format!("ack put {name} {} {seq}", stored.version())
                    };
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}")
                        .and_then(|()| out.flush())
                        .expect("child: stdout");
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
}

fn service(name: &str, seq: usize) -> Resource {
    let metadata = Metadata {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        // The child's pid too: a write identical to the stored resource is not written (`unchanged`, its old
        // version), and a child's `seq` repeats the previous child's.
        labels: [("seq".to_owned(), format!("{}-{seq}", std::process::id()))].into(),
        ..Metadata::default()
    };
    let port = ServicePort {
        name: String::new(),
        port: 80,
        target_port: None,
        protocol: Protocol::Detect,
        tls_mode: None,
    };
    let spec = Spec::Service(Service {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        ports: vec![port],
        virtual_addresses: Vec::new(),
        hosts: Vec::new(),
        tls_mode: None,
    });
    Resource { metadata, spec }
}

/// A fresh directory on the build's disk (not a tmpfs), so writes really go through fsync; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("store-crash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
