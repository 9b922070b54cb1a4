//! `shoal up` is robust (issue 16): its control plane is a process of its own, restarted on the same data
//! directory and ports when it dies while requests keep crossing the mesh; nothing it started outlives
//! it, even when it is killed with SIGKILL (grandchildren in its process group included); a second run
//! with the same data directory finds its ports again, or names what holds one.
//!
//! Real processes: the `shoal`, `shoal-control-plane`, `shoal-proxy` and `shoalctl` binaries of the target
//! directory (`cargo build -p shoal-proxy --bin shoal-proxy -p shoal-control-plane --bins` first).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_tests::control_plane::parse_status_row;
use shoal_tests::process::TempDir;
use shoal_tests::up::{
    Up, addr, addresses, alive, get, group_members, pids, poll, shoalctl, signal_pid, workload,
};

const WORKLOADS: [&str; 4] = ["frontend", "backend-v1", "backend-v2", "greeter"];

/// What the request loop saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failures: Vec<String>,
}

/// `GET /` through the frontend's sidecar (frontend → its sidecar → backend's and greeter's sidecars)
/// back to back until `stop`, each on a new connection.
fn request_loop(
    inbound: SocketAddr,
    seen: Arc<std::sync::Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let answer = get(inbound, "frontend", "/", "");
            let mut s = seen.lock().unwrap();
            match answer {
                // v1, or v2 once the test has applied its route.
                Ok((200, body)) if body.contains("backend v") && body.contains("greeter") => {
                    s.ok += 1
                }
                other => s.failures.push(format!("{other:?}")),
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn a_killed_control_plane_is_restarted_on_its_ports_while_requests_keep_succeeding() {
    let dir = TempDir::new("shoal-up").expect("dir");
    let data = dir.path().join("data");
    let mut up = Up::start(
        &[
            "--base-port",
            "0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &dir.path().join("ready.json"),
    );
    let ready = up.wait_ready();
    let cp = &ready["control_plane"];
    let (old_pid, admin) = (cp["pid"].as_u64().expect("pid") as u32, addr(&cp["admin"]));
    let inbound = addr(&workload(&ready, "frontend")["inbound"]);
    let outbound = addr(&workload(&ready, "frontend")["outbound"]);

    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = request_loop(inbound, seen.clone(), stop.clone());
    poll(Duration::from_secs(10), "requests before the kill", || {
        let ok = seen.lock().unwrap().ok;
        if ok >= 20 { Ok(()) } else { Err(ok) }
    });

    let ok_at_kill = seen.lock().unwrap().ok;
    signal_pid(old_pid, "KILL");
    // Restarted: a new pid in the ready file, on exactly the same ports.
    let restarted = poll(
        Duration::from_secs(60),
        "a restarted control plane",
        || match up.ready() {
            Some(r) if r["control_plane"]["restarts"] == 1 => Ok(r),
            other => Err(other),
        },
    );
    let new_pid = restarted["control_plane"]["pid"].as_u64().expect("pid") as u32;
    assert_ne!(new_pid, old_pid);
    assert!(alive(new_pid), "the new control plane {new_pid} runs");
    assert!(
        !alive(old_pid),
        "the killed control plane {old_pid} is gone"
    );
    for key in ["admin", "discovery", "metrics"] {
        assert_eq!(
            restarted["control_plane"][key], ready["control_plane"][key],
            "the control plane's {key} address"
        );
    }
    let printed = up.stdout();
    assert!(
        printed.contains(&format!(
            "the control plane (pid {old_pid}) exited (signal: 9 (SIGKILL))"
        )) && printed.contains(&format!("control plane restarted (pid {new_pid})")),
        "{printed}"
    );

    // Every sidecar reconnects to it: connected and SYNCED again.
    poll(
        Duration::from_secs(60),
        "every sidecar SYNCED again",
        || {
            let status = shoalctl(&admin.to_string(), &["status"], "")?;
            for name in WORKLOADS {
                match parse_status_row(&status, name) {
                    Some(row) if row.state == "SYNCED" => {}
                    other => return Err(format!("{name}: {other:?}\n{status}")),
                }
            }
            Ok(())
        },
    );
    // Requests kept crossing the mesh between the kill and the sidecars' resync (the loop would have
    // recorded any failure).
    let ok_until_synced = seen.lock().unwrap().ok;
    assert!(
        ok_until_synced > ok_at_kill,
        "no request completed between the kill and the resync"
    );
    // And what changes now reaches them: the restarted control plane pushes a new route.
    let route = "kind: Route\nmetadata: {name: backend}\nspec:\n  parent_service: backend\n  rules:\n  - backends: [{service: backend-v2, weight: 100}]\n";
    shoalctl(&admin.to_string(), &["apply", "-f", "-"], route).expect("apply");
    poll(
        Duration::from_secs(10),
        "backend v2 after the new route",
        || match get(outbound, "backend", "/", "") {
            Ok((200, body)) if body.trim() == "backend v2" => Ok(()),
            other => Err(other),
        },
    );

    let before = seen.lock().unwrap().ok;
    poll(
        Duration::from_secs(10),
        "requests after the restart",
        || {
            let ok = seen.lock().unwrap().ok;
            if ok >= before + 20 { Ok(()) } else { Err(ok) }
        },
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("request loop");
    let seen = seen.lock().unwrap();
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed while the control plane was away or after: {:?}",
        seen.failures.len(),
        seen.ok + seen.failures.len() as u64,
        &seen.failures[..seen.failures.len().min(5)]
    );

    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}");
    assert!(!alive(new_pid), "the control plane stopped with shoal up");
}

#[test]
fn nothing_outlives_shoal_up_killed_with_sigkill() {
    let dir = TempDir::new("shoal-up").expect("dir");
    let data = dir.path().join("data");
    let mut up = Up::start(
        &[
            "--base-port",
            "0",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &dir.path().join("ready.json"),
    );
    let ready = up.wait_ready();
    let started = pids(&ready);
    let pgid = ready["process_group"].as_u64().expect("process_group") as u32;
    for (what, pid) in &started {
        assert!(alive(*pid), "{what} ({pid}) runs");
    }
    // A grandchild: something an app started (through a shell, say) in the group it inherited.
    let mut grandchild = std::process::Command::new("sh")
        .args(["-c", "sleep 600 & wait"])
        .process_group(pgid as i32)
        .spawn()
        .expect("sh runs");
    let members = group_members(pgid);
    assert!(
        members.len() > started.len(),
        "the group holds every child and the grandchild: {members:?}"
    );

    up.signal("KILL");
    up.wait_exit(Duration::from_secs(10));
    poll(Duration::from_secs(20), "an empty process group", || {
        let left = group_members(pgid);
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    for (what, pid) in &started {
        assert!(!alive(*pid), "{what} ({pid}) outlived shoal up");
    }
    let _ = grandchild.wait();
    for (what, addr) in addresses(&ready) {
        assert!(
            TcpStream::connect(addr).is_err(),
            "{what} {addr} still open"
        );
    }
}

#[test]
fn a_second_run_reuses_its_ports_or_names_what_holds_one() {
    let dir = TempDir::new("shoal-up").expect("dir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8");
    let ready_file = dir.path().join("ready.json");

    let mut first = Up::start(&["--base-port", "0", "--data-dir", data_arg], &ready_file);
    let ready = first.wait_ready();
    let ports = addresses(&ready);
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    drop(first);

    // No --base-port: the data directory's ports, every one of them.
    let mut second = Up::start(&["--data-dir", data_arg], &ready_file);
    let again = second.wait_ready();
    assert_eq!(addresses(&again), ports, "the second run's ports");
    assert!(
        second.stdout().contains("ports: the last run's"),
        "{}",
        second.stdout()
    );
    second.signal("TERM");
    assert!(second.wait_exit(Duration::from_secs(30)).success());
    drop(second);

    // One of them held by someone else (this test): an error naming the port, its use and the holder.
    let (_, admin) = ports
        .iter()
        .find(|(what, _)| what == "control plane admin")
        .expect("admin")
        .clone();
    let held = TcpListener::bind(admin).expect("hold the admin port");
    let mut third = Up::start(&["--data-dir", data_arg], &ready_file);
    let status = third.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", third.stderr());
    let error = third.stderr();
    assert!(
        error.contains(&format!(
            "port {} (control plane admin API) is in use by ",
            admin.port()
        )) && error.contains(&format!("(pid {})", std::process::id()))
            && error.contains("--base-port"),
        "{error}"
    );
    drop(held);
}

#[test]
fn a_control_plane_that_cannot_come_back_stops_the_mesh_with_its_log() {
    let dir = TempDir::new("shoal-up").expect("dir");
    let data = dir.path().join("data");
    // The real control plane the first time; every later start fails at once, as a broken store would.
    let real =
        shoal_tests::control_plane::control_plane_binary().expect("the control plane binary");
    let mark = dir.path().join("started-once");
    let script = dir.path().join("control-plane.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{mark}' ]; then echo 'cannot open the store (test)' >&2; exit 3; fi\ntouch '{mark}'\nexec '{real}'\n",
            mark = mark.display(),
            real = real.display()
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut up = Up::start(
        &[
            "--base-port",
            "0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--control-plane-bin",
            script.to_str().expect("utf-8"),
        ],
        &dir.path().join("ready.json"),
    );
    let ready = up.wait_ready();
    let started = pids(&ready);
    signal_pid(
        ready["control_plane"]["pid"].as_u64().expect("pid") as u32,
        "KILL",
    );

    let status = up.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", up.stderr());
    let error = up.stderr();
    assert!(
        error.contains("the control plane exited (exit status: 3)")
            && error.contains("cannot open the store (test)"),
        "{error}"
    );
    assert!(
        up.stdout()
            .contains("restarting it on the same data directory and ports")
    );
    poll(Duration::from_secs(20), "every process stopped", || {
        let left: Vec<_> = started.iter().filter(|(_, pid)| alive(*pid)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}
