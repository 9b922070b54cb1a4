//! Starting the real `shoal-proxy` binary and talking to its admin listener.
//!
//! ```ignore
//! let backend = HttpBackend::echo().await;
//! let proxy = ProxyBuilder::new()
//!     .inbound_explicit(backend.addr())
//!     .env("SHOAL_RESPONSE_TIMEOUT", "500ms")
//!     .start()
//!     .await;
//! let resp = http1_get(proxy.inbound(), "app", "/").await?;
//! ```
//!
//! Every listener binds `127.0.0.1:0`; the real ports are read from the proxy's
//! `shoal-proxy ready` log line (its `admin=` and `listeners=` fields, inbound first). The
//! builder then polls `GET /ready` until it answers 200. The proxy's output is kept in memory
//! and printed to stderr when the [`Proxy`] is dropped, so a failing test shows it (test runners
//! only show a passing test's output on request). The process is killed on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::client::{H1Client, empty, full, request};
use crate::process::{ChildProcess, Stream, TempDir};

/// Longest wait for a proxy to report ready (generous: a debug binary on a loaded 2-core CI
/// machine can start slowly).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy binary: `$SHOAL_PROXY_BIN` if set, else `<target dir>/debug/shoal-proxy`, built once
/// (per test process) with `cargo build -p shoal-proxy --bin shoal-proxy` if it is missing.
///
/// The target dir is `$CARGO_TARGET_DIR` (relative paths from the workspace root) or
/// `<workspace>/target`. An existing binary is used as is: run `cargo build -p shoal-proxy`
/// (or `cargo nextest run --workspace`, which builds it) after changing the proxy.
pub fn proxy_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SHOAL_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let workspace = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    let bin = target.join("debug").join("shoal-proxy");
    if bin.exists() {
        return Ok(bin);
    }
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    BUILD
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "shoal-proxy", "--bin", "shoal-proxy"])
                .current_dir(&workspace)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("cargo build -p shoal-proxy failed: {status}"))
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    if !bin.exists() {
        bail!("{} is still missing after building it", bin.display());
    }
    Ok(bin)
}

/// The start of a state file with the service most outbound tests call: `app` (port 80, also
/// named `app.example`), more of its fields (`fields`: YAML indented as its fields, may be empty)
/// and `endpoints`; routes and policies may follow.
pub fn app_service_state(fields: &str, endpoints: &[SocketAddr]) -> String {
    let list: String = endpoints
        .iter()
        .map(|a| format!("\n      - address: \"{a}\""))
        .collect();
    format!(
        "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n{fields}    endpoints:{list}\n"
    )
}

/// A state file with the service `web` (port 80) whose one endpoint is `addr`, in the mesh with
/// the SPIFFE id `identity`: the mesh tests' usual callee.
pub fn mesh_web_state(addr: SocketAddr, identity: &str) -> String {
    format!(
        "services:\n  - name: web\n    port: 80\n    endpoints:\n      - address: \"{addr}\"\n        identity: {identity}\n"
    )
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Configures and starts a proxy. Defaults: admin on `127.0.0.1:0`, both data listeners off,
/// `SHOAL_SHUTDOWN_GRACE=10s`; every inherited `SHOAL_*` variable is removed.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    env: BTreeMap<String, String>,
    state: Option<String>,
    config_file: Option<String>,
    ready_timeout: Duration,
    /// Wait for `/ready` to answer 200 after the ready line (off: a proxy that is meant to stay
    /// unready, such as one that cannot get its certificate).
    wait_ready: bool,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    /// A proxy with only its admin listener.
    pub fn new() -> Self {
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("SHOAL_ADMIN_ADDR", "127.0.0.1:0"),
            ("SHOAL_INBOUND_MODE", "off"),
            ("SHOAL_INBOUND_ADDR", "127.0.0.1:0"),
            ("SHOAL_OUTBOUND_MODE", "off"),
            ("SHOAL_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("SHOAL_SHUTDOWN_GRACE", "10s"),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        Self {
            env,
            state: None,
            config_file: None,
            ready_timeout: READY_TIMEOUT,
            wait_ready: true,
        }
    }

    /// Sets one environment variable (any `SHOAL_*` setting).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// A file-based mesh identity (`SHOAL_IDENTITY_CERT_FILE` and friends).
    pub fn identity(mut self, files: &crate::pki::IdentityFiles) -> Self {
        for (k, v) in files.env() {
            self = self.env(k, v);
        }
        self
    }

    /// Removes a variable the builder set by default.
    pub fn unset(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// Explicit inbound listener forwarding everything to `app`.
    pub fn inbound_explicit(self, app: SocketAddr) -> Self {
        self.env("SHOAL_INBOUND_MODE", "explicit")
            .env("SHOAL_INBOUND_APP_ADDR", app)
    }

    /// Transparent inbound listener (needs iptables to be useful; without them the proxy closes
    /// connections that were not redirected).
    pub fn inbound_transparent(self) -> Self {
        self.env("SHOAL_INBOUND_MODE", "transparent")
    }

    /// Explicit outbound listener: HTTP routed by Host/`:authority`.
    pub fn outbound_explicit(self) -> Self {
        self.env("SHOAL_OUTBOUND_MODE", "explicit")
    }

    /// Explicit outbound listener whose non-HTTP traffic (and unknown authorities) go to `target`.
    pub fn outbound_target(self, target: impl ToString) -> Self {
        self.outbound_explicit()
            .env("SHOAL_OUTBOUND_TARGET", target)
    }

    /// Transparent outbound listener.
    pub fn outbound_transparent(self) -> Self {
        self.env("SHOAL_OUTBOUND_MODE", "transparent")
    }

    /// Writes `yaml` to a state file in the proxy's temp dir and sets `SHOAL_STATE_FILE`.
    pub fn state(mut self, yaml: &str) -> Self {
        self.state = Some(yaml.to_string());
        self
    }

    /// Writes `yaml` to a config file in the proxy's temp dir and sets `SHOAL_CONFIG`.
    pub fn config_file(mut self, yaml: &str) -> Self {
        self.config_file = Some(yaml.to_string());
        self
    }

    /// Turns access logs on (`SHOAL_ACCESS_LOG=true`).
    pub fn access_log(self) -> Self {
        self.env("SHOAL_ACCESS_LOG", "true")
    }

    /// JSON log lines (`SHOAL_LOG_FORMAT=json`).
    pub fn json_logs(self) -> Self {
        self.env("SHOAL_LOG_FORMAT", "json")
    }

    /// How long [`Self::start`] waits for the proxy to become ready.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    fn is_on(&self, key: &str) -> bool {
        self.env.get(key).is_some_and(|m| m != "off")
    }

    /// Spawns the process without waiting for anything; returns it with its temp dir.
    pub fn spawn(&self) -> Result<(ChildProcess, TempDir, Option<PathBuf>)> {
        let dir = TempDir::new("proxy")?;
        let bin = proxy_binary()?;
        let mut cmd = Command::new(&bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHOAL_") {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(&self.env);
        let mut state_path = None;
        if let Some(state) = &self.state {
            let path = dir.path().join("state.yaml");
            std::fs::write(&path, state)?;
            cmd.env("SHOAL_STATE_FILE", &path);
            state_path = Some(path);
        }
        if let Some(config) = &self.config_file {
            let path = dir.path().join("config.yaml");
            std::fs::write(&path, config)?;
            cmd.env("SHOAL_CONFIG", &path);
        }
        cmd.env("RUST_BACKTRACE", "1");
        let child = ChildProcess::spawn("shoal-proxy", cmd)?;
        Ok((child, dir, state_path))
    }

    /// Starts the proxy without waiting for `/ready` (only for its listeners): for a proxy meant
    /// to stay unready, such as one whose certificate never comes.
    pub fn unready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts the proxy and waits until it is ready. Panics (printing its output) if it does not
    /// become ready in time.
    pub async fn start(self) -> Proxy {
        match self.try_start().await {
            Ok(p) => p,
            Err(e) => panic!("the proxy did not start: {e:#}"),
        }
    }

    /// Like [`Self::start`], returning the error instead of panicking.
    pub async fn try_start(self) -> Result<Proxy> {
        let (mut child, dir, state_path) = self.spawn()?;
        let deadline = Instant::now() + self.ready_timeout;
        let (admin, listeners) = child
            .wait_for_line(
                "`shoal-proxy ready` line",
                self.ready_timeout,
                parse_ready_line,
            )
            .await?;
        let mut listeners = listeners.into_iter();
        let inbound = if self.is_on("SHOAL_INBOUND_MODE") {
            listeners.next()
        } else {
            None
        };
        let outbound = if self.is_on("SHOAL_OUTBOUND_MODE") {
            listeners.next()
        } else {
            None
        };
        let proxy = Proxy {
            child,
            admin,
            inbound,
            outbound,
            state_path,
            dump_on_drop: true,
            _dir: dir,
        };
        if !self.wait_ready {
            return Ok(proxy);
        }
        loop {
            match proxy.admin_get("/ready").await {
                Ok(r) if r.status == StatusCode::OK => break,
                last => {
                    if Instant::now() >= deadline {
                        bail!(
                            "GET /ready did not answer 200 within {:?} (last: {last:?}); output:\n{}",
                            self.ready_timeout,
                            proxy.logs()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(proxy)
    }

    /// Runs a proxy that is expected to fail start-up: waits up to `timeout` for it to exit and
    /// returns its status and output. Fails if it is still running then (it is killed).
    pub fn run_to_exit(&self, timeout: Duration) -> Result<Exited> {
        let (mut child, _dir, _) = self.spawn()?;
        match child.wait_exit_blocking(timeout)? {
            Some(status) => Ok(Exited {
                status,
                stdout: child.output().lines(Stream::Stdout).join("\n"),
                stderr: child.output().lines(Stream::Stderr).join("\n"),
            }),
            None => {
                child.kill();
                bail!(
                    "the proxy was still running after {timeout:?}; output:\n{}",
                    child.output().all()
                )
            }
        }
    }
}

/// How a process that was expected to stop ended.
#[derive(Debug)]
pub struct Exited {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// Finds the admin address and listener addresses in a `shoal-proxy ready` line (plain or JSON).
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, Vec<SocketAddr>)> {
    if !line.contains("shoal-proxy ready") {
        return None;
    }
    let field = |name: &str| -> Option<&str> {
        for prefix in [format!("{name}="), format!("\"{name}\":\"")] {
            if let Some(i) = line.find(&prefix) {
                return Some(&line[i + prefix.len()..]);
            }
        }
        None
    };
    let admin_text = field("admin")?;
    let end = admin_text
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':' || c == '[' || c == ']'))
        .unwrap_or(admin_text.len());
    let admin: SocketAddr = admin_text[..end].parse().ok()?;
    let listeners_text = field("listeners")?.strip_prefix('[')?;
    let listeners_text = &listeners_text[..listeners_text.find(']')?];
    let listeners = listeners_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<SocketAddr>>>()?;
    Some((admin, listeners))
}

/// A running proxy; killed when dropped (its output is printed to stderr then).
pub struct Proxy {
    child: ChildProcess,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
    state_path: Option<PathBuf>,
    dump_on_drop: bool,
    _dir: TempDir,
}

/// A response from the admin listener.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    /// Status code.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl AdminResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl Proxy {
    /// The inbound listener's address. Panics if it is off.
    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("the inbound listener is off")
    }

    /// The outbound listener's address. Panics if it is off.
    pub fn outbound(&self) -> SocketAddr {
        self.outbound.expect("the outbound listener is off")
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The state file (when the builder was given one).
    pub fn state_path(&self) -> &Path {
        self.state_path
            .as_deref()
            .expect("the proxy was started without a state file")
    }

    /// Everything the proxy printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.child.output().all()
    }

    /// The proxy's stdout lines (its logs).
    pub fn log_lines(&self) -> Vec<String> {
        self.child.output().lines(Stream::Stdout)
    }

    /// The stdout lines that parse as JSON objects (with `SHOAL_LOG_FORMAT=json`).
    pub fn json_log_lines(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// Waits until a log line satisfies `pred`; returns it.
    pub async fn wait_for_log(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        crate::process::wait_for_line(|| self.log_lines(), timeout, what, pred).await
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill`.
    pub fn signal(&self, sig: &str) -> Result<()> {
        self.child.signal(sig)
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.child.wait_exit(timeout).await
    }

    /// Sends an admin request.
    pub async fn admin_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<AdminResponse> {
        let mut client = H1Client::connect(self.admin).await?;
        let body = match body {
            Some(b) => full(Bytes::from(b.to_string())),
            None => empty(),
        };
        let host = self.admin.to_string();
        let resp = client
            .send(request(method, path, Some(&host)).body(body)?)
            .await?;
        Ok(AdminResponse {
            status: resp.status,
            headers: resp.headers.clone(),
            body: resp.text(),
        })
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Result<AdminResponse> {
        self.admin_request("GET", path, None).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self
            .admin_get("/metrics")
            .await
            .expect("GET /metrics on the admin listener");
        assert_eq!(r.status, StatusCode::OK, "GET /metrics: {}", r.body);
        r.body
    }

    /// One metric read from `/metrics`: the sum of the series of `name` with all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::prom::metric_value(&self.metrics().await, name, labels)
    }

    /// Waits until metric `name{labels}` equals `value`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        crate::wait::eventually(
            Duration::from_secs(10),
            &format!("{name}{labels:?} == {value}"),
            || async {
                let v = self.metric(name, labels).await;
                if v == value { Ok(()) } else { Err(v) }
            },
        )
        .await
    }

    /// `GET /config` as JSON.
    pub async fn config(&self) -> serde_json::Value {
        let r = self.admin_get("/config").await.expect("GET /config");
        assert_eq!(r.status, StatusCode::OK, "GET /config: {}", r.body);
        r.json().expect("GET /config is JSON")
    }

    /// Stops printing the output on drop (for tests that print it themselves).
    pub fn quiet(&mut self) {
        self.dump_on_drop = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.child.kill();
        if self.dump_on_drop {
            eprintln!(
                "----- shoal-proxy (pid {}, admin {}) output -----\n{}----- end of shoal-proxy output -----",
                self.child.pid(),
                self.admin,
                self.child.output().all()
            );
        }
    }
}

/// Which listener a test's client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The explicit inbound listener: everything goes to `SHOAL_INBOUND_APP_ADDR`.
    Inbound,
    /// The explicit outbound listener: each request goes where its Host names (here the
    /// backend's `IP:PORT`, a passthrough destination).
    Outbound,
}

impl Via {
    /// Both listeners.
    pub const BOTH: [Via; 2] = [Via::Inbound, Via::Outbound];

    /// The proxy listener to connect to.
    pub fn entry(self, proxy: &Proxy) -> SocketAddr {
        match self {
            Via::Inbound => proxy.inbound(),
            Via::Outbound => proxy.outbound(),
        }
    }

    /// The Host a request to `backend` carries: any name inbound (`app.example:8080`), the
    /// backend's address outbound (so explicit outbound routing finds it).
    pub fn host(self, backend: SocketAddr) -> String {
        match self {
            Via::Inbound => "app.example:8080".to_string(),
            Via::Outbound => backend.to_string(),
        }
    }
}

impl ProxyBuilder {
    /// Both explicit listeners, the inbound one forwarding to `app` (see [`Via`]).
    pub fn both_explicit(self, app: SocketAddr) -> Self {
        self.inbound_explicit(app).outbound_explicit()
    }
}
