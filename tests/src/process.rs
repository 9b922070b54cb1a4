//! Child processes the tests start: output captured line by line, killed on drop; temporary
//! directories removed on drop.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Which stream a captured line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (the proxy's logs).
    Stdout,
    /// Standard error (start-up errors).
    Stderr,
}

/// Everything a child printed so far, line by line.
#[derive(Debug, Default)]
pub struct Output {
    lines: Mutex<Vec<(Stream, String)>>,
}

impl Output {
    fn push(&self, stream: Stream, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((stream, line));
    }

    /// The lines of one stream.
    pub fn lines(&self, stream: Stream) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Both streams interleaved in arrival order, one line each, `stderr` lines marked.
    pub fn all(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (stream, line) in lines.iter() {
            if *stream == Stream::Stderr {
                out.push_str("[stderr] ");
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// A running child process whose stdout and stderr are captured into an [`Output`]; killed
/// (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Waits until a stdout line parses with `parse` (the process's "ready" line), failing with
    /// its output if it exits first or `timeout` passes. `what` names it in messages.
    pub async fn wait_for_line<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .output()
                .lines(Stream::Stdout)
                .iter()
                .find_map(|l| parse(l))
            {
                return Ok(found);
            }
            if let Some(status) = self.try_exit()? {
                self.wait_exit(Duration::from_secs(1)).await?;
                bail!(
                    "{what}: the process exited with {status} first; output:\n{}",
                    self.output().all()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: not within {timeout:?}; output:\n{}",
                    self.output().all()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Spawns `cmd` with stdout and stderr captured; `name` labels it in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let output = Arc::new(Output::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(capture(out, Stream::Stdout, output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(capture(err, Stream::Stderr, output.clone()));
        }
        Ok(Self {
            name: name.to_string(),
            child,
            output,
            readers,
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process printed so far.
    pub fn output(&self) -> &Arc<Output> {
        &self.output
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`, ...) with `kill -<SIG> <pid>`.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{sig} {} failed: {status}", self.pid());
        }
        Ok(())
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Polls for the process to exit within `timeout`; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                self.join_readers();
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Blocking version of [`Self::wait_exit`], for tests without a runtime.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                self.join_readers();
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the output readers to reach end of file (after the process exited).
    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().ok().flatten().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.join_readers();
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn capture<R: Read + Send + 'static>(
    reader: R,
    stream: Stream,
    output: Arc<Output>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    output.push(stream, line.trim_end_matches(['\n', '\r']).to_string());
                }
            }
        }
    })
}

/// The path of the command `name` on PATH. Panics naming the Debian `package` when it is missing:
/// a test that needs a tool fails without it rather than passing quietly (`.ci/run` installs
/// every tool the tests use).
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` is missing: apt-get install {package} (.ci/run does)"))
}

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory; `prefix` helps find it when debugging.
    pub fn new(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "shoal-tests-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating temp dir {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Waits until one of the lines `lines()` returns satisfies `pred` (polled with a deadline);
/// returns that line. Shared by the proxy's and the control plane's `wait_for_log`.
pub async fn wait_for_line(
    lines: impl Fn() -> Vec<String>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    crate::wait::eventually(timeout, what, || {
        let found = lines().into_iter().find(|l| pred(l));
        async move { found.ok_or("no such line yet") }
    })
    .await
}
