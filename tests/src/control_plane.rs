//! Starting the real `shoal-control-plane` binary, and running `shoalctl` against it.
//!
//! ```ignore
//! let cp = ControlPlaneBuilder::new().start().await;
//! cp.ctl(&["apply", "-f", "-"], Some(yaml)).await.success();
//! let proxy = ProxyBuilder::new()
//!     .outbound_explicit()
//!     .env("SHOAL_DISCOVERY_ADDR", cp.discovery_url())
//!     .env("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE", cp.anchors_file())
//!     .start()
//!     .await;
//! ```
//!
//! The three listeners (admin, discovery, metrics) bind `127.0.0.1:0`; the real ports are read
//! from the `control plane ready` log line (its `admin_addr=`, `discovery_addr=` and
//! `metrics_addr=` fields, plain or JSON), then `GET /ready` on the metrics listener is polled
//! until it answers 200. The store lives in a temporary directory removed on drop (or in a
//! directory the test gives). [`ControlPlane::kill`] sends SIGKILL; [`ControlPlane::restart`]
//! starts a new process on the same data directory and the same three addresses, so proxies
//! pointed at the discovery address reconnect to it. The output of every run is kept in memory
//! and printed when the [`ControlPlane`] is dropped (test runners show it for failing tests).
//!
//! Proxies reach discovery over TLS ([`ControlPlane::discovery_url`] is `https://`), verifying the
//! control plane with the trust anchors it writes to its data directory ([`ControlPlane::anchors_file`]);
//! [`ControlPlane::proxy_builder`] sets both. A test that wants plaintext starts the control plane with
//! `SHOAL_CP_DISCOVERY_PLAINTEXT=true` and uses [`ControlPlane::discovery_url_plaintext`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use crate::client::{H1Client, empty, request};
use crate::process::{ChildProcess, Stream, TempDir};
use crate::proxy::{AdminResponse, READY_TIMEOUT, workspace_root};

/// The target directory: `$CARGO_TARGET_DIR` (relative paths from the workspace root) or
/// `<workspace>/target`.
fn target_dir() -> PathBuf {
    let workspace = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// `<target>/debug/<name>`, built once per test process with
/// `cargo build -p shoal-control-plane --bins` if it (or its sibling) is missing.
fn control_plane_crate_binary(name: &str) -> Result<PathBuf> {
    let debug = target_dir().join("debug");
    let bin = debug.join(name);
    if bin.exists() {
        return Ok(bin);
    }
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    BUILD
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "shoal-control-plane", "--bins"])
                .current_dir(workspace_root())
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "cargo build -p shoal-control-plane --bins failed: {status}"
                ))
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    if !bin.exists() {
        bail!("{} is still missing after building it", bin.display());
    }
    Ok(bin)
}

/// The control-plane binary: `$SHOAL_CONTROL_PLANE_BIN` if set, else
/// `<target dir>/debug/shoal-control-plane` (built once if missing; an existing binary is used as
/// is, so run `cargo build -p shoal-control-plane --bins` after changing it).
pub fn control_plane_binary() -> Result<PathBuf> {
    match std::env::var_os("SHOAL_CONTROL_PLANE_BIN") {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => control_plane_crate_binary("shoal-control-plane"),
    }
}

/// The `shoalctl` binary: `$SHOALCTL_BIN` if set, else `<target dir>/debug/shoalctl` (built once
/// if missing, like [`control_plane_binary`]).
pub fn shoalctl_binary() -> Result<PathBuf> {
    match std::env::var_os("SHOALCTL_BIN") {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => control_plane_crate_binary("shoalctl"),
    }
}

/// The `shoal` binary (`shoal up`): `$SHOAL_BIN` if set, else `<target dir>/debug/shoal` (built
/// once if missing, like [`control_plane_binary`]).
pub fn shoal_binary() -> Result<PathBuf> {
    match std::env::var_os("SHOAL_BIN") {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => control_plane_crate_binary("shoal"),
    }
}

/// What one `shoalctl` run printed and how it exited.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The command line (for messages).
    pub args: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// When the process was seen to exit (for latency measurements from `apply`).
    pub exited_at: Instant,
}

impl CtlOutput {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics (with the whole output) unless the command exited 0; returns `self`.
    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.status.success(),
            "shoalctl {:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `shoalctl --server <server> <args...>`, writing `stdin` to its standard input (`-f -`).
/// Inherited `SHOAL_*` variables are removed so only `--server` decides where it connects.
pub async fn shoalctl(server: &str, args: &[&str], stdin: Option<&str>) -> Result<CtlOutput> {
    let bin = shoalctl_binary()?;
    let mut cmd = tokio::process::Command::new(&bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHOAL_") {
            cmd.env_remove(&k);
        }
    }
    cmd.arg("--server")
        .arg(server)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .await
            .context("writing shoalctl's stdin")?;
        drop(input);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| anyhow!("shoalctl {args:?} did not exit within 30s"))?
        .context("waiting for shoalctl")?;
    let exited_at = Instant::now();
    Ok(CtlOutput {
        args: args.iter().map(|a| a.to_string()).collect(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exited_at,
    })
}

/// Configures and starts a control plane. Defaults: the three listeners on `127.0.0.1:0`, a
/// fresh temporary data directory; every inherited `SHOAL_*` variable is removed.
#[derive(Debug, Clone)]
pub struct ControlPlaneBuilder {
    env: BTreeMap<String, String>,
    data_dir: Option<PathBuf>,
    ready_timeout: Duration,
}

impl Default for ControlPlaneBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The addresses the control plane is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpAddrs {
    /// Admin API (gRPC, `shoalctl`).
    pub admin: SocketAddr,
    /// Discovery (gRPC, proxies).
    pub discovery: SocketAddr,
    /// `/metrics`, `/ready`, `/live`.
    pub metrics: SocketAddr,
}

impl ControlPlaneBuilder {
    /// A control plane on free loopback ports with a temporary store.
    pub fn new() -> Self {
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("SHOAL_CP_ADMIN_ADDR", "127.0.0.1:0"),
            ("SHOAL_CP_DISCOVERY_ADDR", "127.0.0.1:0"),
            ("SHOAL_CP_METRICS_ADDR", "127.0.0.1:0"),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        Self {
            env,
            data_dir: None,
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Keeps the store in `dir` (not removed on drop) instead of a temporary directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// How long [`Self::start`] waits for the control plane to become ready.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the control plane and waits until it is ready; panics (with its output) if it
    /// does not become ready in time.
    pub async fn start(self) -> ControlPlane {
        match self.try_start().await {
            Ok(cp) => cp,
            Err(e) => panic!("the control plane did not start: {e:#}"),
        }
    }

    /// Like [`Self::start`], returning the error instead of panicking.
    pub async fn try_start(self) -> Result<ControlPlane> {
        let (tmp, data_dir) = match &self.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = TempDir::new("cp")?;
                let dir = tmp.path().join("data");
                (Some(tmp), dir)
            }
        };
        let mut cp = ControlPlane {
            env: self.env,
            data_dir,
            ready_timeout: self.ready_timeout,
            child: None,
            addrs: None,
            webhook_addr: None,
            earlier_output: String::new(),
            dump_on_drop: true,
            _tmp: tmp,
        };
        cp.launch(None).await?;
        Ok(cp)
    }
}

/// A running (or killed, restartable) control plane. Killed when dropped; its output (of every
/// run) is printed then.
pub struct ControlPlane {
    env: BTreeMap<String, String>,
    data_dir: PathBuf,
    ready_timeout: Duration,
    child: Option<ChildProcess>,
    addrs: Option<CpAddrs>,
    /// The sidecar injector's webhook listener, when enabled (`webhook_addr` of the ready line).
    webhook_addr: Option<SocketAddr>,
    /// The output of earlier runs (before a restart).
    earlier_output: String,
    dump_on_drop: bool,
    _tmp: Option<TempDir>,
}

/// Finds the three addresses in a `control plane ready` line (plain `key=value` or JSON).
pub fn parse_cp_ready_line(line: &str) -> Option<CpAddrs> {
    if !line.contains("control plane ready") {
        return None;
    }
    let field = |name: &str| ready_field(line, name);
    Some(CpAddrs {
        admin: field("admin_addr")?,
        discovery: field("discovery_addr")?,
        metrics: field("metrics_addr")?,
    })
}

/// The address in field `name` of a `control plane ready` line (plain `key=value` or JSON).
fn ready_field(line: &str, name: &str) -> Option<SocketAddr> {
    for prefix in [format!("{name}="), format!("\"{name}\":\"")] {
        if let Some(i) = line.find(&prefix) {
            let text = &line[i + prefix.len()..];
            let end = text
                .find(|c: char| {
                    !(c.is_ascii_hexdigit() || c == '.' || c == ':' || c == '[' || c == ']')
                })
                .unwrap_or(text.len());
            return text[..end].parse().ok();
        }
    }
    None
}

/// `GET path` on a plain HTTP listener.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<AdminResponse> {
    let mut client = H1Client::connect(addr).await?;
    let host = addr.to_string();
    let resp = client
        .send(request("GET", path, Some(&host)).body(empty())?)
        .await?;
    Ok(AdminResponse {
        status: resp.status,
        headers: resp.headers.clone(),
        body: resp.text(),
    })
}

impl ControlPlane {
    /// Spawns the process (on `addrs` if given, else the builder's addresses) and waits for its
    /// ready line and `GET /ready == 200`.
    async fn launch(&mut self, addrs: Option<CpAddrs>) -> Result<()> {
        let bin = control_plane_binary()?;
        let mut cmd = Command::new(&bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHOAL_") {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(&self.env);
        if let Some(a) = addrs {
            cmd.env("SHOAL_CP_ADMIN_ADDR", a.admin.to_string())
                .env("SHOAL_CP_DISCOVERY_ADDR", a.discovery.to_string())
                .env("SHOAL_CP_METRICS_ADDR", a.metrics.to_string());
        }
        cmd.env("SHOAL_CP_DATA_DIR", &self.data_dir)
            .env("RUST_BACKTRACE", "1");
        let mut child = ChildProcess::spawn("shoal-control-plane", cmd)?;
        let deadline = Instant::now() + self.ready_timeout;
        let found = child
            .wait_for_line("`control plane ready` line", self.ready_timeout, |line| {
                parse_cp_ready_line(line).map(|addrs| (addrs, ready_field(line, "webhook_addr")))
            })
            .await?;
        let (found, webhook) = found;
        self.child = Some(child);
        self.addrs = Some(found);
        self.webhook_addr = webhook;
        loop {
            match http_get(found.metrics, "/ready").await {
                Ok(r) if r.status == StatusCode::OK => break,
                last => {
                    if Instant::now() >= deadline {
                        bail!(
                            "GET /ready did not answer 200 within {:?} (last: {last:?}); output:\n{}",
                            self.ready_timeout,
                            self.logs()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn addrs(&self) -> CpAddrs {
        self.addrs.expect("the control plane has been started")
    }

    /// The Admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.addrs().admin
    }

    /// The Discovery address.
    pub fn discovery_addr(&self) -> SocketAddr {
        self.addrs().discovery
    }

    /// The Discovery address as a TLS URL, for the proxy's `SHOAL_DISCOVERY_ADDR` (with
    /// [`Self::anchors_file`] as `SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE`).
    pub fn discovery_url(&self) -> String {
        format!("https://{}", self.discovery_addr())
    }

    /// The Discovery address as a plaintext h2c URL: only served with `SHOAL_CP_DISCOVERY_PLAINTEXT=true`.
    pub fn discovery_url_plaintext(&self) -> String {
        format!("http://{}", self.discovery_addr())
    }

    /// The public trust anchors file the control plane writes (`trust-anchors.pem` in its data
    /// directory): the roots of its trust bundle, which its discovery certificate chains to.
    pub fn anchors_file(&self) -> PathBuf {
        self.data_dir.join("trust-anchors.pem")
    }

    /// The sidecar injector's webhook address (HTTPS); panics unless the control plane was started with
    /// `SHOAL_CP_WEBHOOK_CERT_FILE` and `SHOAL_CP_WEBHOOK_KEY_FILE`.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
            .expect("the control plane serves the webhook (SHOAL_CP_WEBHOOK_* set)")
    }

    /// The metrics listener's address (`/metrics`, `/ready`, `/live`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.addrs().metrics
    }

    /// The Admin API as `shoalctl --server` takes it.
    pub fn server(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// The store's directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The current process id. Panics if no process runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the control plane runs").pid()
    }

    /// Whether the current process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_exit().ok().flatten().is_none())
    }

    /// `shoalctl --server <this control plane> <args...>`, with `stdin` on standard input.
    pub async fn ctl(&self, args: &[&str], stdin: Option<&str>) -> CtlOutput {
        match shoalctl(&self.server(), args, stdin).await {
            Ok(out) => out,
            Err(e) => panic!("running shoalctl {args:?}: {e:#}"),
        }
    }

    /// A join token for `default/<service_account>` (`shoalctl token create`), usable `uses` times
    /// (`"0"` or `None`, the command's default: unlimited until it expires); panics unless it succeeds.
    pub async fn join_token(&self, service_account: &str, uses: Option<&str>) -> String {
        let mut args = vec![
            "token",
            "create",
            "--namespace",
            "default",
            "--service-account",
            service_account,
        ];
        if let Some(uses) = uses {
            args.extend(["--uses", uses]);
        }
        let out = self.ctl(&args, None).await.success();
        out.stdout.trim().to_string()
    }

    /// `shoalctl ca status -o json`, parsed; panics unless it succeeds.
    pub async fn ca_status(&self) -> serde_json::Value {
        let out = self
            .ctl(&["ca", "status", "-o", "json"], None)
            .await
            .success();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("ca status -o json: {e}: {}", out.stdout))
    }

    /// The `state` of every root in `shoalctl ca status`, in its order (`ACTIVE`, `PENDING`,
    /// `RETIRING`).
    pub async fn ca_states(&self) -> Vec<String> {
        root_states(&self.ca_status().await)
    }

    /// `shoalctl apply -f -` with `yaml`; panics unless it succeeds.
    pub async fn apply(&self, yaml: &str) -> CtlOutput {
        self.ctl(&["apply", "-f", "-"], Some(yaml)).await.success()
    }

    /// Everything printed so far, by every run (stdout and stderr).
    pub fn logs(&self) -> String {
        let mut all = self.earlier_output.clone();
        if let Some(c) = &self.child {
            all.push_str(&c.output().all());
        }
        all
    }

    /// The current run's stdout lines (its logs).
    pub fn log_lines(&self) -> Vec<String> {
        self.child
            .as_ref()
            .map(|c| c.output().lines(Stream::Stdout))
            .unwrap_or_default()
    }

    /// Waits until a log line of the current run satisfies `pred`; returns it.
    pub async fn wait_for_log(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        crate::process::wait_for_line(|| self.log_lines(), timeout, what, pred).await
    }

    /// `GET path` on the metrics listener.
    pub async fn http_get(&self, path: &str) -> Result<AdminResponse> {
        http_get(self.metrics_addr(), path).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.http_get("/metrics").await.expect("GET /metrics");
        assert_eq!(r.status, StatusCode::OK, "GET /metrics: {}", r.body);
        r.body
    }

    /// One metric: the sum of the series of `name` with all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::prom::metric_value(&self.metrics().await, name, labels)
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`, ...) to the current process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        self.child
            .as_ref()
            .ok_or_else(|| anyhow!("the control plane is not running"))?
            .signal(sig)
    }

    /// SIGKILL: the process dies at once (no shutdown, no flush); waits until it is reaped.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.kill();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns the exit status (`None` if it
    /// was still running, in which case it is killed).
    pub async fn stop(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        if c.try_exit()?.is_none() {
            c.signal("TERM")?;
        }
        let status = c.wait_exit(timeout).await?;
        if status.is_none() {
            c.kill();
        }
        Ok(status)
    }

    /// Starts a new process on the same data directory and the same three addresses (the
    /// current one, if still running, is killed first) and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        let addrs = self.addrs();
        if let Some(mut old) = self.child.take() {
            old.kill();
            self.earlier_output.push_str(&old.output().all());
            self.earlier_output
                .push_str("----- control plane restarted -----\n");
        }
        // The ports were just released; retry briefly in case the kernel is slow to free them.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.launch(Some(addrs)).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("in use") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops printing the output on drop.
    pub fn quiet(&mut self) {
        self.dump_on_drop = false;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if self.dump_on_drop {
            let admin = self.addrs.map(|a| a.admin.to_string()).unwrap_or_default();
            eprintln!(
                "----- shoal-control-plane (admin {admin}) output -----\n{}----- end of shoal-control-plane output -----",
                self.logs()
            );
        }
    }
}

/// One proxy's row of `shoalctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRow {
    /// `SYNCED`, `STALE`, `NACKED`, or `DISCONNECTED` (its stream ended within the control plane's
    /// grace period).
    pub state: String,
    /// The `RESOURCES` column, e.g. `6/6 synced`.
    pub resources: String,
    /// The `LAST NACK` column (empty unless NACKED).
    pub last_nack: String,
    /// The `IDENTITY` column: the SPIFFE id the proxy proved on its discovery stream, `none`,
    /// `none (plaintext)` (`None` if the table has no such column).
    pub identity: Option<String>,
    /// The whole line.
    pub line: String,
}

/// Finds `proxy_id`'s row in `shoalctl status` output (the default table).
pub fn parse_status_row(stdout: &str, proxy_id: &str) -> Option<ProxyRow> {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(proxy_id))?;
    // Cells with spaces (`none (plaintext)`) are cut at the header's column starts: the table pads
    // every column to its widest cell.
    let header = stdout.lines().next().unwrap_or_default();
    let identity = match (header.find(" IDENTITY "), header.find(" NODE ")) {
        (Some(start), Some(end)) if start < end => line
            .get(start + 1..end + 1)
            .map(|cell| cell.trim().to_string()),
        _ => None,
    };
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let state = tokens
        .iter()
        .find(|t| matches!(**t, "SYNCED" | "STALE" | "NACKED" | "DISCONNECTED"))?
        .to_string();
    let synced_at = line.find(" synced")?;
    let before = &line[..synced_at];
    let count_start = before.rfind(' ').map_or(0, |i| i + 1);
    Some(ProxyRow {
        state,
        resources: line[count_start..synced_at + " synced".len()].to_string(),
        last_nack: line[synced_at + " synced".len()..].trim().to_string(),
        identity,
        line: line.to_string(),
    })
}

impl ControlPlane {
    /// A proxy builder with an explicit outbound listener fed by this control plane's discovery
    /// over TLS (`SHOAL_DISCOVERY_ADDR`, `SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE`), identified as
    /// `proxy_id` in `shoalctl status`.
    pub fn proxy_builder(&self, proxy_id: &str) -> crate::ProxyBuilder {
        crate::ProxyBuilder::new()
            .outbound_explicit()
            .env("SHOAL_DISCOVERY_ADDR", self.discovery_url())
            .env(
                "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
                self.anchors_file().display(),
            )
            .env("SHOAL_PROXY_ID", proxy_id)
    }

    /// [`Self::proxy_builder`] for a proxy that joins the mesh as `default/<service_account>` with a
    /// fresh join token ([`Self::join_token`], `uses` as there).
    pub async fn joining_proxy(
        &self,
        proxy_id: &str,
        service_account: &str,
        uses: Option<&str>,
    ) -> crate::ProxyBuilder {
        let token = self.join_token(service_account, uses).await;
        self.proxy_builder(proxy_id)
            .env("SHOAL_IDENTITY_TOKEN", token)
            .env("SHOAL_SERVICE_ACCOUNT", service_account)
    }

    /// `proxy_id`'s row of `shoalctl status` (`None` if it is neither connected nor disconnected
    /// within the grace period).
    pub async fn proxy_row(&self, proxy_id: &str) -> Option<ProxyRow> {
        let out = self.ctl(&["status"], None).await.success();
        parse_status_row(&out.stdout, proxy_id)
    }

    /// Polls `shoalctl status` until `proxy_id` is connected and its `IDENTITY` column reads
    /// `identity`; returns its row.
    pub async fn wait_proxy_identity(
        &self,
        proxy_id: &str,
        identity: &str,
        timeout: Duration,
    ) -> ProxyRow {
        crate::wait::eventually(
            timeout,
            &format!("proxy {proxy_id} with IDENTITY {identity} in `shoalctl status`"),
            || async {
                let out = self.ctl(&["status"], None).await.success();
                match parse_status_row(&out.stdout, proxy_id) {
                    Some(row) if row.identity.as_deref() == Some(identity) => Ok(row),
                    _ => Err(format!("stdout:\n{}stderr:\n{}", out.stdout, out.stderr)),
                }
            },
        )
        .await
    }

    /// `proxy_id`'s document in `shoalctl status -o json` (`None` if it is not connected).
    pub async fn proxy_status_json(&self, proxy_id: &str) -> Option<serde_json::Value> {
        let out = self.ctl(&["status", "-o", "json"], None).await.success();
        let all: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status -o json: {e}: {}", out.stdout));
        all.as_array()?
            .iter()
            .find(|p| p["proxyId"] == proxy_id)
            .cloned()
    }

    /// Polls `shoalctl status` until `proxy_id` is connected and in `state` (`SYNCED`, `STALE`,
    /// `NACKED`); returns its row.
    pub async fn wait_proxy_state(
        &self,
        proxy_id: &str,
        state: &str,
        timeout: Duration,
    ) -> ProxyRow {
        crate::wait::eventually(
            timeout,
            &format!("proxy {proxy_id} {state} in `shoalctl status`"),
            || async {
                let out = self.ctl(&["status"], None).await.success();
                match parse_status_row(&out.stdout, proxy_id) {
                    Some(row) if row.state == state => Ok(row),
                    _ => Err(format!("stdout:\n{}stderr:\n{}", out.stdout, out.stderr)),
                }
            },
        )
        .await
    }
}

/// The `state` of every root of a `shoalctl ca status|rotate -o json` document, in its order.
pub fn root_states(status: &serde_json::Value) -> Vec<String> {
    status["roots"]
        .as_array()
        .map(|roots| {
            roots
                .iter()
                .map(|r| r["state"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// YAML for a `Service` `name` on `port` plus one `EndpointRegistration` (`<name>-<i>`) per
/// endpoint, for `shoalctl apply`.
pub fn service_yaml(name: &str, port: u16, endpoints: &[SocketAddr]) -> String {
    let mut yaml =
        format!("kind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: {port}}}]\n");
    for (i, e) in endpoints.iter().enumerate() {
        yaml.push_str(&registration_yaml(&format!("{name}-{i}"), name, *e, None));
    }
    yaml
}

/// YAML for one `EndpointRegistration` (a document with its leading `---`).
pub fn registration_yaml(
    reg: &str,
    service: &str,
    endpoint: SocketAddr,
    ttl_seconds: Option<u32>,
) -> String {
    let ttl = ttl_seconds.map_or(String::new(), |t| format!(", ttl_seconds: {t}"));
    format!(
        "---\nkind: EndpointRegistration\nmetadata: {{name: {reg}}}\nspec: {{service: {service}, address: {}, port: {}{ttl}}}\n",
        endpoint.ip(),
        endpoint.port()
    )
}

/// YAML for a `Route` of `service` with one rule splitting traffic over `backends`
/// (`(service, weight)`).
pub fn route_yaml(service: &str, backends: &[(&str, u32)]) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|(s, w)| format!("{{service: {s}, weight: {w}}}"))
        .collect();
    format!(
        "kind: Route\nmetadata: {{name: {service}}}\nspec:\n  parent_service: {service}\n  rules:\n  - backends: [{}]\n",
        backends.join(", ")
    )
}

/// Sends `GET /` requests with a given `Host` to a proxy's listener over one kept HTTP/1.1
/// connection, reconnecting after a failure (so one failed request does not fail the next).
pub struct MeshClient {
    addr: SocketAddr,
    conn: Option<H1Client>,
}

impl MeshClient {
    /// A client of `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// `GET path` with `Host: host`; a new connection if the last one failed or closed.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<crate::Resp> {
        let conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => H1Client::connect(self.addr).await?,
        };
        let mut conn = conn;
        let resp = tokio::time::timeout(Duration::from_secs(10), conn.get(host, path))
            .await
            .map_err(|_| anyhow!("GET {path} Host {host}: no response within 10s"))??;
        self.conn = Some(conn);
        Ok(resp)
    }

    /// Drops the kept connection (the next request opens a new one).
    pub fn reconnect(&mut self) {
        self.conn = None;
    }

    /// `GET /` with `Host: host`; returns the body if the status is 200, else an error naming
    /// the status, the proxy's `shoal-proxy-error` reason and the body.
    pub async fn body(&mut self, host: &str) -> Result<String> {
        let resp = self.get(host, "/").await?;
        if resp.status != StatusCode::OK {
            bail!(
                "Host {host}: status {} (shoal-proxy-error: {:?}): {}",
                resp.status,
                resp.header("shoal-proxy-error"),
                resp.text()
            );
        }
        Ok(resp.text())
    }
}

/// The request side of a discovery stream driven by hand, as a proxy opens it: `hello`, then a
/// subscription to the trust bundle (so the control plane has something to send). Nothing is
/// ever ACKed. Keep the sender alive as long as the stream should stay open.
pub async fn hello_then_bundle_subscription(
    hello: shoal_proto::v1::Hello,
) -> (
    tokio::sync::mpsc::Sender<shoal_proto::v1::DiscoveryRequest>,
    impl futures_util::Stream<Item = shoal_proto::v1::DiscoveryRequest>,
) {
    use shoal_proto::v1::{self, discovery_request::Request};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let subscribe = v1::Subscribe {
        resources: vec![v1::ResourceKey {
            r#type: v1::ResourceType::TrustBundle as i32,
            name: "cluster.local".into(),
        }],
    };
    for request in [Request::Hello(hello), Request::Subscribe(subscribe)] {
        let message = v1::DiscoveryRequest {
            request: Some(request),
        };
        tx.send(message)
            .await
            .expect("the stream's receiver is here");
    }
    (tx, ReceiverStream::new(rx))
}

/// `Identity.Certify` of `namespace/service_account` through `cp`'s discovery listener in plaintext (the
/// control plane runs with `SHOAL_CP_DISCOVERY_PLAINTEXT=true`) with `credential`, for a fresh key: the answer,
/// or the refusal.
pub async fn certify_plaintext(
    cp: &ControlPlane,
    namespace: &str,
    service_account: &str,
    credential: shoal_proto::v1::certify_request::Credential,
) -> std::result::Result<shoal_proto::v1::CertifyResponse, tonic::Status> {
    use shoal_proto::v1;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("CSR");
    let channel = tonic::transport::Endpoint::from_shared(cp.discovery_url_plaintext())
        .expect("discovery URL")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("discovery listener");
    let request = v1::CertifyRequest {
        csr: Some(v1::certify_request::Csr::CsrPem(csr)),
        credential: Some(credential),
        namespace: namespace.into(),
        service_account: service_account.into(),
    };
    v1::identity_client::IdentityClient::new(channel)
        .certify(request)
        .await
        .map(tonic::Response::into_inner)
}
