//! The control plane under test: the real `shoal-control-plane` binary as a child process, pinned to
//! one CPU, with a fresh data directory; killed with SIGKILL and restarted on the same directory
//! and addresses for the resync phase.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::os::Sample;

/// How long the control plane may take to log `control plane ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The three listeners of a running control plane.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Admin API (gRPC).
    pub admin: SocketAddr,
    /// Discovery (gRPC).
    pub discovery: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (HTTP).
    pub metrics: SocketAddr,
}

/// A running control plane.
pub struct ControlPlane {
    binary: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    cpu: Option<usize>,
    /// Settings beyond the listeners' and the data directory's (Kubernetes mode: the API server).
    env: Vec<(String, String)>,
    child: Child,
    /// Where it listens (the same across restarts).
    pub addrs: Addrs,
    /// Time from spawning the process to its `control plane ready` line.
    pub startup: Duration,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl ControlPlane {
    /// Copies `binary` into `dir` (a concurrent `cargo build` cannot swap it mid-run) and starts it
    /// on a fresh data directory there, with every listener on a free loopback port, pinned to
    /// `cpu` with `taskset` when given, with the extra settings `env`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        cpu: Option<usize>,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        if !binary.exists() {
            bail!(
                "control-plane binary {} not found: build it with `cargo build --release -p shoal-control-plane` \
                 or pass --cp-bin",
                binary.display()
            );
        }
        let copy = dir.join("shoal-control-plane");
        std::fs::copy(binary, &copy)
            .with_context(|| format!("cannot copy {} to {}", binary.display(), copy.display()))?;
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let any = Addrs {
            admin: any,
            discovery: any,
            metrics: any,
        };
        let spawned = Instant::now();
        let (child, addrs, startup) = spawn(
            &copy,
            &dir.join("data"),
            &dir.join("control-plane.log"),
            cpu,
            any,
            &env,
        )
        .await?;
        Ok(Self {
            binary: copy,
            data_dir: dir.join("data"),
            log: dir.join("control-plane.log"),
            cpu,
            env,
            child,
            addrs,
            startup,
            spawned,
        })
    }

    /// The process id (for `/proc` and `perf`).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// CPU time and memory now.
    pub fn sample(&self) -> Result<Sample> {
        Sample::of(self.pid())
    }

    /// SIGKILL: no graceful shutdown, streams break as in a crash.
    pub async fn kill(&mut self) -> Result<()> {
        self.child
            .start_kill()
            .context("cannot kill the control plane")?;
        self.child
            .wait()
            .await
            .context("waiting for the killed control plane")?;
        Ok(())
    }

    /// Starts a new process on the same data directory and addresses; returns when it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.spawned = Instant::now();
        let (child, addrs, startup) = spawn(
            &self.binary,
            &self.data_dir,
            &self.log,
            self.cpu,
            self.addrs,
            &self.env,
        )
        .await?;
        self.child = child;
        self.addrs = addrs;
        self.startup = startup;
        Ok(())
    }

    /// Waits until a line of its log contains `needle` (the log file is read every 10 ms); returns
    /// when it was seen, and the line.
    pub async fn wait_for_log(
        &self,
        needle: &str,
        deadline: Duration,
    ) -> Result<(Instant, String)> {
        let started = Instant::now();
        loop {
            let text = tokio::fs::read_to_string(&self.log)
                .await
                .with_context(|| format!("cannot read {}", self.log.display()))?;
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok((Instant::now(), line.to_owned()));
            }
            // Fails when the process is gone.
            self.sample()?;
            if started.elapsed() > deadline {
                bail!(
                    "the control plane did not log `{needle}` within {deadline:?} (see {})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The control plane's own `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let mut stream = tokio::net::TcpStream::connect(self.addrs.metrics).await?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addrs.metrics
        );
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut body).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(text))
    }
}

/// Starts the process and waits for its ready line; returns the child, its addresses and the
/// start-up time.
async fn spawn(
    binary: &Path,
    data_dir: &Path,
    log: &Path,
    cpu: Option<usize>,
    addrs: Addrs,
    env: &[(String, String)],
) -> Result<(Child, Addrs, Duration)> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SHOAL_CP_ADMIN_ADDR", addrs.admin.to_string())
        .env("SHOAL_CP_DISCOVERY_ADDR", addrs.discovery.to_string())
        .env("SHOAL_CP_METRICS_ADDR", addrs.metrics.to_string())
        .env("SHOAL_CP_DATA_DIR", data_dir)
        // The simulated proxies speak h2c: the bench measures discovery, not TLS (and its figures
        // stay comparable with those measured before the listener required TLS).
        .env("SHOAL_CP_DISCOVERY_PLAINTEXT", "true")
        // The default log level (info), as deployed: one line per proxy connect and disconnect.
        .env("SHOAL_LOG_FORMAT", "json")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {}{}",
            binary.display(),
            if cpu.is_some() { " under taskset" } else { "" }
        )
    })?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
        .with_context(|| format!("cannot open {}", log.display()))?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for pipe in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr),
    ] {
        let tx = line_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(line_tx);
    // One task keeps the log file and looks for the ready line.
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut tail: Vec<String> = Vec::new();
        while let Some(line) = line_rx.recv().await {
            let _ = file.write_all(line.as_bytes()).await;
            let _ = file.write_all(b"\n").await;
            if ready_tx.is_some() {
                if let Some(addrs) = ready_addrs(&line) {
                    let _ = ready_tx.take().map(|tx| tx.send(Ok(addrs)));
                } else {
                    tail.push(line);
                }
            }
        }
        if let Some(tx) = ready_tx {
            let _ = tx.send(Err(tail.join("\n")));
        }
    });
    let addrs = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(addrs))) => addrs,
        Ok(Ok(Err(output))) => {
            bail!("the control plane exited before it was ready; its output:\n{output}")
        }
        Ok(Err(_)) => bail!("the control plane's output ended before it was ready"),
        Err(_) => bail!(
            "the control plane did not log `control plane ready` within {READY_TIMEOUT:?} (see {})",
            log.display()
        ),
    };
    Ok((child, addrs, started.elapsed()))
}

/// The addresses in a JSON `control plane ready` line.
fn ready_addrs(line: &str) -> Option<Addrs> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "control plane ready" {
        return None;
    }
    let addr = |name: &str| -> Option<SocketAddr> { v.get(name)?.as_str()?.parse().ok() };
    Some(Addrs {
        admin: addr("admin_addr")?,
        discovery: addr("discovery_addr")?,
        metrics: addr("metrics_addr")?,
    })
}

/// The value of an unlabelled metric (or the sum of its labelled series) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Turns a missing metric into an error naming it.
pub fn require_metric(text: &str, name: &str) -> Result<f64> {
    metric_sum(text, name).ok_or_else(|| anyhow!("the control plane's /metrics has no {name}"))
}

/// The cumulative buckets (`le` upper bound in seconds, count) of a histogram in Prometheus text.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The bucket bound (ms) under which a share `q` of the observations made between two readings of
/// the same histogram fall (`None`: no observations).
pub fn bucket_quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let count_before = |le: f64| {
        before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c)
    };
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - count_before(*le)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| le * 1e3)
}
