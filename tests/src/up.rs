//! `shoal up` as a child process: its output captured, its `--ready-file` read, its process group and
//! the processes it started found in `/proc`.
//!
//! Blocking (std threads), like the user's terminal: the tests poll with deadlines ([`poll`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control_plane::{shoal_binary, shoalctl_binary};

/// How long `shoal up` may take to be ready (debug builds, four sidecars, a busy 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `shoal up`. Dropped: killed with SIGKILL (its guard then kills everything it started) and
/// its output printed, so a failing test shows what it said.
pub struct Up {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Its `--ready-file`.
    pub ready_file: PathBuf,
    exit: Option<ExitStatus>,
}

/// Reads `from` into `into` until end of file, on a thread.
fn capture(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&text);
        }
    });
}

impl Up {
    /// Starts `shoal up ARGS --ready-file <ready_file>` without any inherited `SHOAL_*` variable.
    pub fn start(args: &[&str], ready_file: &Path) -> Self {
        let bin = shoal_binary().expect("the shoal binary");
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHOAL_") {
                cmd.env_remove(&k);
            }
        }
        let mut child = cmd
            .arg("up")
            .args(args)
            .arg("--ready-file")
            .arg(ready_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shoal up starts");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        capture(child.stdout.take().expect("stdout"), Arc::clone(&stdout));
        capture(child.stderr.take().expect("stderr"), Arc::clone(&stderr));
        Self {
            child,
            stdout,
            stderr,
            ready_file: ready_file.to_path_buf(),
            exit: None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits until the ready file exists and returns it; panics (with the output) if `shoal up` exits
    /// first or is not ready within [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) -> serde_json::Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(ready) = self.ready() {
                return ready;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "shoal up exited before it was ready ({status}):\n{}{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "shoal up not ready within {READY_TIMEOUT:?}:\n{}{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ready file as it is now (`None` if it does not exist yet).
    pub fn ready(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.ready_file).ok()?;
        Some(serde_json::from_str(&text).expect("the ready file is JSON"))
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to `shoal up`.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }

    /// Waits for it to exit, at most `timeout`; panics with its output otherwise.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "shoal up did not exit within {timeout:?}:\n{}{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        eprintln!(
            "----- shoal up (pid {}) stdout -----\n{}----- stderr -----\n{}----- end of shoal up output -----",
            self.child.id(),
            self.stdout(),
            self.stderr()
        );
    }
}

/// Sends `signal` to `pid` with `kill(1)`.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// `/proc/<pid>/stat`'s fields after the command name (state first), `None` if no such process.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` runs (a zombie has exited: only its parent has not reaped it yet).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// Every live process in process group `pgid`, with its command name.
pub fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut members = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return members;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        // Fields after the name: state, ppid, pgrp.
        if let Some(f) = stat_fields(pid)
            && f[0] != "Z"
            && f[2] == pgid.to_string()
        {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            members.push((pid, name.trim().to_owned()));
        }
    }
    members
}

/// Polls `check` until it returns `Ok`, at most `timeout`; panics with `what` and the last `Err`.
pub fn poll<T, E: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observation: {e:?}")
            }
            Err(_) => std::thread::sleep(crate::wait::POLL_INTERVAL),
        }
    }
}

/// `GET path` over HTTP/1.1 with `host` and `extra` header lines (each ending in CRLF), on a new
/// connection: status and body, or why it failed.
pub fn get(addr: SocketAddr, host: &str, path: &str, extra: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let status = (response.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// Runs `shoalctl --server <admin> ARGS` with `stdin`: stdout, or stdout and stderr if it failed.
pub fn shoalctl(admin: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new(shoalctl_binary().expect("the shoalctl binary"))
        .arg("--server")
        .arg(format!("http://{admin}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shoalctl runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("shoalctl finishes");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "shoalctl {args:?}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// An address field of the ready file (`ready["control_plane"]["admin"]`, ...).
pub fn addr(value: &serde_json::Value) -> SocketAddr {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {value}"))
}

/// A workload of the ready file by name.
pub fn workload<'a>(ready: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    (ready["workloads"].as_array().expect("workloads"))
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {name} in {ready}"))
}

/// Every process id the ready file names: the control plane, each app and sidecar, and the process
/// group's guard.
pub fn pids(ready: &serde_json::Value) -> Vec<(String, u32)> {
    let as_pid = |v: &serde_json::Value| v.as_u64().expect("a pid") as u32;
    let mut pids = vec![
        (
            "control plane".to_owned(),
            as_pid(&ready["control_plane"]["pid"]),
        ),
        ("guard".to_owned(), as_pid(&ready["process_group"])),
    ];
    for w in ready["workloads"].as_array().expect("workloads") {
        for key in ["app_pid", "proxy_pid"] {
            pids.push((format!("{} {key}", w["name"]), as_pid(&w[key])));
        }
    }
    pids
}

/// Every address the ready file names, by what it is.
pub fn addresses(ready: &serde_json::Value) -> Vec<(String, SocketAddr)> {
    let mut all = Vec::new();
    for key in ["admin", "discovery", "metrics"] {
        all.push((
            format!("control plane {key}"),
            addr(&ready["control_plane"][key]),
        ));
    }
    for w in ready["workloads"].as_array().expect("workloads") {
        for key in ["app", "inbound", "outbound", "admin"] {
            all.push((format!("{} {key}", w["name"]), addr(&w[key])));
        }
    }
    all
}
