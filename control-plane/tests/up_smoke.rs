//! `shoal up` end to end, with the real binaries: it becomes ready, a request crosses two sidecars, a route
//! applied with `shoalctl` moves traffic to v2, and SIGTERM stops everything (exit 0, no process left, no
//! port open, the temporary directory gone).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const SHOALCTL: &str = env!("CARGO_BIN_EXE_shoalctl");

/// Kills `shoal up` if the test fails before stopping it (its children then exit with their stdin or are
/// left for the next assertion to report).
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// shoal-proxy next to `shoal` (what `shoal up` looks for), built if missing.
fn ensure_proxy_binary() {
    let bin = Path::new(SHOAL).with_file_name("shoal-proxy");
    if bin.exists() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(cargo)
        .args(["build", "-p", "shoal-proxy", "--bin", "shoal-proxy"])
        .current_dir(workspace)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p shoal-proxy failed");
    assert!(bin.exists(), "{} missing after the build", bin.display());
}

/// `GET /` with `host` and `extra` header lines: status and body.
fn get(addr: &str, host: &str, extra: &str) -> Option<(u16, String)> {
    get_path(addr, host, "/", extra)
}

/// `GET path` with `host` and `extra` header lines: status and body.
fn get_path(addr: &str, host: &str, path: &str, extra: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Polls `get` until the body contains `want`, for at most `within`.
fn eventually(addr: &str, host: &str, extra: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = get(addr, host, extra);
        if let Some((200, body)) = &answer
            && body.contains(want)
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} from {addr} (Host: {host}) within {within:?}; last answer: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shoalctl(server: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(SHOALCTL)
        .args(args)
        .env("SHOAL_SERVER", server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shoalctl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("shoalctl finishes");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "shoalctl {args:?}: {text}{err}");
    text
}

fn alive(pid: u64) -> bool {
    // A zombie has been stopped but not reaped: only `shoal up` could reap it, and it has exited.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split(") ").nth(1).is_some_and(|s| !s.starts_with('Z')))
}

#[test]
fn shoal_up_runs_a_mesh_shifts_traffic_and_stops_cleanly() {
    ensure_proxy_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let ready_file = dir.path().join("ready.json");
    let child = Command::new(SHOAL)
        .args(["up", "--base-port", "0", "--ready-file"])
        .arg(&ready_file)
        .env_remove("SHOAL_PROXY_BIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shoal up starts");
    let mut up = Up(child);
    let mut stdout = up.0.stdout.take().expect("stdout");
    let printed = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready_file.exists() {
        if let Some(status) = up.0.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = up.0.stderr.take().expect("stderr").read_to_string(&mut err);
            panic!("shoal up exited before it was ready ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "shoal up not ready within 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready_file).expect("read")).expect("json");
    let workload = |name: &str| {
        let all = ready["workloads"].as_array().expect("workloads");
        all.iter().find(|w| w["name"] == name).expect(name).clone()
    };
    let frontend = workload("frontend");
    let (inbound, outbound) = (
        frontend["inbound"].as_str().expect("inbound"),
        frontend["outbound"].as_str().expect("outbound"),
    );

    // frontend's sidecar → frontend → its sidecar → backend's and greeter's sidecars → apps.
    let body = eventually(
        inbound,
        "frontend",
        "",
        "backend v1",
        Duration::from_secs(10),
    );
    assert!(body.contains("hello frontend, from greeter"), "{body}");
    // backend through the frontend's outbound sidecar: v1 by the initial route, v2 for the canary header.
    eventually(
        outbound,
        "backend",
        "",
        "backend v1",
        Duration::from_secs(5),
    );
    eventually(
        outbound,
        "backend",
        "x-canary: 1\r\n",
        "backend v2",
        Duration::from_secs(5),
    );

    let server = format!(
        "http://{}",
        ready["control_plane"]["admin"].as_str().expect("admin")
    );
    let services = shoalctl(&server, &["get", "services"], "");
    assert!(
        services.contains("backend-v2") && services.contains("greeter"),
        "{services}"
    );
    let route = "kind: Route\nmetadata: {name: backend}\nspec:\n  parent_service: backend\n  rules:\n  - backends: [{service: backend-v2, weight: 100}]\n";
    shoalctl(&server, &["apply", "-f", "-"], route);
    eventually(
        outbound,
        "backend",
        "",
        "backend v2",
        Duration::from_secs(5),
    );
    // Every request now: none left on v1.
    for _ in 0..10 {
        let (status, body) = get(outbound, "backend", "").expect("answer");
        assert_eq!((status, body.trim()), (200, "backend v2"));
    }
    let status = shoalctl(&server, &["status"], "");
    assert!(status.contains("frontend"), "{status}");
    // Sidecar to sidecar is mTLS: each sidecar holds its workload's SPIFFE id, and the backend's
    // strict inbound side answers a plain-text caller 403 mtls-required, never passing it on.
    let backend = workload("backend-v1");
    let (_, identity) = get_path(
        backend["admin"].as_str().expect("admin"),
        "x",
        "/config",
        "",
    )
    .expect("backend-v1's /config");
    assert!(
        identity.contains("spiffe://cluster.local/ns/default/sa/backend-v1"),
        "{identity}"
    );
    let plain = get(
        backend["inbound"].as_str().expect("inbound"),
        "backend-v1",
        "",
    );
    assert!(
        plain
            .as_ref()
            .is_some_and(|(status, body)| *status == 403 && body.contains("mtls-required")),
        "plain text to a strict sidecar must get 403 mtls-required: {plain:?}"
    );

    // SIGTERM: exit 0 within the deadline, every child gone, every port closed, the temp dir removed.
    let pid = up.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = up.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shoal up did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = printed.join().expect("stdout reader");
    assert!(exit.success(), "exit {exit}; stdout:\n{printed}");
    assert!(
        printed.contains("shoalctl apply -f - <<EOF") && printed.contains("/metrics"),
        "{printed}"
    );
    assert!(printed.contains("shoal up: stopped"), "{printed}");
    for w in ready["workloads"].as_array().expect("workloads") {
        for key in ["app_pid", "proxy_pid"] {
            let pid = w[key].as_u64().expect("pid");
            assert!(!alive(pid), "{} {key} {pid} still running", w["name"]);
        }
        for key in ["app", "inbound", "outbound", "admin"] {
            let addr: SocketAddr = w[key].as_str().expect("addr").parse().expect("addr");
            assert!(
                TcpStream::connect(addr).is_err(),
                "{} {key} {addr} still open",
                w["name"]
            );
        }
    }
    for key in [&ready["control_plane"]["pid"], &ready["process_group"]] {
        let pid = key.as_u64().expect("pid");
        assert!(
            !alive(pid),
            "the control plane or the guard ({pid}) still runs"
        );
    }
    let admin: SocketAddr = server.trim_start_matches("http://").parse().expect("addr");
    assert!(
        TcpStream::connect(admin).is_err(),
        "the control plane still listens"
    );
    let data_dir = PathBuf::from(ready["data_dir"].as_str().expect("data_dir"));
    assert!(!data_dir.exists(), "{} not removed", data_dir.display());
    assert!(!ready_file.exists(), "the ready file is removed on exit");
}
