//! The mesh's child processes: started in the guard's process group ([`super::guard`]) with their output
//! in a log file, waited for until ready, and stopped with SIGTERM, a deadline, then SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};

/// How long a child may take to become ready (generous: debug builds on a busy 2-core machine).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child has to exit after SIGTERM before it is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running child process.
pub(crate) struct Process {
    /// What it is, for messages (`frontend sidecar`).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Where its standard output and error go.
    pub log: PathBuf,
    child: Child,
    // Held open: demo apps exit when it closes, even if `shoal up` itself is killed.
    _stdin: Option<ChildStdin>,
}

/// A command for `program` without the inherited `SHOAL_*` variables: a stray `SHOAL_STATE_FILE` or
/// `SHOAL_CONFIG` in the user's shell must not change what the demo's sidecars do.
pub(crate) fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHOAL_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

impl Process {
    /// Starts `cmd` in process group `pgid` (the guard's: it dies with `shoal up`, and a terminal's Ctrl-C
    /// reaches only `shoal up`, which then stops the children in order), with its output in `log`
    /// (appended to with `append`, as for a restarted control plane, else truncated).
    pub(crate) fn spawn(
        name: String,
        mut cmd: Command,
        log: PathBuf,
        pgid: u32,
        append: bool,
    ) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let stderr = file
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(file)
            .stderr(stderr)
            .process_group(pgid as i32)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the {name}: {e}"))?;
        let pid = child.id().unwrap_or_default();
        let stdin = child.stdin.take();
        Ok(Self {
            name,
            pid,
            log,
            child,
            _stdin: stdin,
        })
    }

    /// `Some(status)` once it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The error for a child that exited when it should not have, with the end of its log.
    pub(crate) fn died(&self, status: ExitStatus) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        if lines.is_empty() {
            return format!("the {} exited ({status}) without a word", self.name);
        }
        let tail = lines[lines.len().saturating_sub(10)..].join("\n    ");
        format!(
            "the {} exited ({status}); the end of {}:\n    {tail}",
            self.name,
            self.log.display()
        )
    }

    /// Waits until `ready` (tried every 50 ms) holds, failing if the child exits first or the time is up.
    pub(crate) async fn wait_ready<F, Fut>(
        &mut self,
        what: &str,
        mut ready: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Err(self.died(status));
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {} is not ready after {READY_TIMEOUT:?} ({what}); see {}",
                    self.name,
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`]. Returns a warning if it had to
    /// be killed or did not exit cleanly (not for a child that had already exited).
    pub(crate) async fn stop(mut self) -> Option<String> {
        if self.exited().is_some() {
            // It stopped on its own, which was reported when it was noticed.
            return None;
        }
        // Not reaped yet (`exited` said so), so the pid is still this child's.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => None,
            // Killed by our SIGTERM without a handler: still a clean stop.
            Ok(Ok(status))
                if std::os::unix::process::ExitStatusExt::signal(&status) == Some(15) =>
            {
                None
            }
            Ok(Ok(status)) => Some(format!("the {} exited with {status}", self.name)),
            Ok(Err(e)) => Some(format!("cannot wait for the {}: {e}", self.name)),
            Err(_) => {
                let _ = self.child.kill().await;
                Some(format!(
                    "the {} did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed",
                    self.name
                ))
            }
        }
    }
}

/// Whether something accepts TCP connections at `addr`.
pub(crate) async fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}

/// `GET path` over HTTP/1.1 with `host`: the status code and body, or `None` if the request failed.
pub(crate) async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}
