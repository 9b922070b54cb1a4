//! Runs the real binaries: the control plane on port 0 (its address read from its JSON `ready` log line)
//! and `shoalctl` with `SHOAL_SERVER` pointing at it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const CONTROL_PLANE: &str = env!("CARGO_BIN_EXE_shoal-control-plane");
pub const SHOALCTL: &str = env!("CARGO_BIN_EXE_shoalctl");

/// A running control plane; killed on drop if a test fails before stopping it.
pub struct ControlPlane {
    child: Child,
    /// `http://` + the admin listener's address.
    pub admin: String,
    /// The metrics listener's address.
    pub metrics: String,
    /// `http://` + the discovery (and identity) listener's address.
    pub discovery: String,
}

impl ControlPlane {
    /// Starts it on `data_dir`, and waits (20 s at most) until it is ready.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Like [`Self::start`], with extra `SHOAL_*` settings.
    pub fn start_with(data_dir: &Path, settings: &[(&str, &str)]) -> Self {
        let child = Command::new(CONTROL_PLANE)
            // The Certify calls of these tests are plain h2c gRPC clients (TLS: tests/tests/cp_tls.rs).
            .env("SHOAL_CP_DISCOVERY_PLAINTEXT", "true")
            .envs(settings.iter().copied())
            .env("SHOAL_CP_ADMIN_ADDR", "127.0.0.1:0")
            .env("SHOAL_CP_DISCOVERY_ADDR", "127.0.0.1:0")
            .env("SHOAL_CP_METRICS_ADDR", "127.0.0.1:0")
            .env("SHOAL_CP_DATA_DIR", data_dir)
            .env("SHOAL_LOG_FORMAT", "json")
            .env("SHOAL_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the control plane starts");
        // Owned from here, so a failed wait below still kills it (Drop).
        let mut cp = Self {
            child,
            admin: String::new(),
            metrics: String::new(),
            discovery: String::new(),
        };
        let stdout = cp.child.stdout.take().expect("piped stdout");
        let (lines, ready) = mpsc::channel();
        // Keep reading for the process's whole life so its log writes never block on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = ready
                .recv_timeout(left)
                .expect("the control plane logs `ready` within 20 s");
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["message"] == "control plane ready" {
                let admin = log["admin_addr"].as_str().expect("admin_addr field");
                cp.admin = format!("http://{admin}");
                let discovery = log["discovery_addr"]
                    .as_str()
                    .expect("discovery_addr field");
                cp.discovery = format!("http://{discovery}");
                cp.metrics = log["metrics_addr"]
                    .as_str()
                    .expect("metrics_addr field")
                    .to_owned();
                return cp;
            }
        }
    }

    /// SIGTERM, then wait (with a deadline) for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "graceful shutdown exits 0, got {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on the metrics listener: the status line and body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).expect("response");
    response
}

/// Runs shoalctl with `args` against `server`, feeding `stdin`.
pub fn shoalctl(server: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(SHOALCTL)
        .args(args)
        .env("SHOAL_SERVER", server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shoalctl runs");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).expect("stdin");
    drop(input);
    child.wait_with_output().expect("shoalctl finishes")
}

/// Runs `command` (a control plane given settings that must stop its start-up) to its exit, 20 s at most: a
/// setting accepted by mistake fails the test naming the command instead of leaving it running forever.
pub fn exit_of(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("killed");
            panic!(
                "{command:?} still running after 20 s: its settings were accepted\nstderr: {}",
                text(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("exited")
}

/// Output bytes as text.
pub fn text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).into_owned()
}

/// Asserts the exit code and that stdout or stderr mention every string.
pub fn expect(output: &Output, code: i32, mentions: &[&str]) -> String {
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {out}\nstderr: {err}"
    );
    for m in mentions {
        assert!(
            out.contains(m) || err.contains(m),
            "{m:?} not in\nstdout: {out}\nstderr: {err}"
        );
    }
    out
}
