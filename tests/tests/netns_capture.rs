//! Netns tier: the iptables rules of `shoal-proxy init` really capture a pod's traffic into the proxy.
//!
//! The test builds a small world it owns entirely, so no rule or packet touches the host: a "pod" network
//! namespace (an app, the proxy running as its own uid, init's rules) and a "peer" namespace (a remote
//! server and a remote client), joined by a veth pair 10.200.0.2 (pod) ↔ 10.200.0.1 (peer). It checks that
//!
//! - `init` twice leaves exactly one copy of each rule,
//! - the app's outbound call to the peer and the peer's inbound call to the app both still get their
//!   responses, and the proxy's `/metrics` counts them in the right direction (so they went through it),
//! - `init --uninstall` leaves the nat table as it was (no `SHOAL_` chain), and a second uninstall succeeds.
//!
//! It needs root, `ip`, `iptables`, `iptables-save`, `setpriv`, `curl` and `python3`; without them it prints
//! `skipped: needs root and iptables (…)` and passes. The proxy binary is `$SHOAL_PROXY_BIN` if set, else
//! `<target dir>/debug/shoal-proxy`, built once with cargo if it is missing.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const POD_IP: &str = "10.200.0.2";
const PEER_IP: &str = "10.200.0.1";
/// The app in the pod namespace.
const APP_PORT: u16 = 8080;
/// The server in the peer namespace the app calls.
const PEER_PORT: u16 = 8081;
/// init's default `--proxy-uid`; the proxy runs as this uid so its own connections are not captured.
const PROXY_UID: u32 = 1337;
const ADMIN_ADDR: &str = "127.0.0.1:15021";
const APP_BODY: &str = "hello from the app in the pod\n";
const PEER_BODY: &str = "hello from the peer\n";

/// Longest wait for a process to become ready; generous because a debug proxy on a loaded 2-core CI
/// machine can take a while to start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a metric to reflect a request that already got its response.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any single helper command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn init_rules_capture_pod_traffic_through_the_proxy() -> Result<()> {
    if let Err(reason) = prerequisites() {
        eprintln!("skipped: needs root and iptables ({reason})");
        return Ok(());
    }
    let proxy = proxy_binary()?;
    let mut world = World::create()?;
    let proxy = world.runnable_by_proxy_uid(&proxy)?;

    // init twice, as a restarted init container would: the second run must not duplicate anything.
    let before = world.nat_rules()?;
    let first_run = world.init(&proxy, &[])?;
    let installed = world.nat_rules()?;
    world.init(&proxy, &[])?;
    let reinstalled = world.nat_rules()?;
    ensure!(
        installed == reinstalled,
        "a second init changed the nat table\nfirst:\n{}\nsecond:\n{}",
        installed.join("\n"),
        reinstalled.join("\n")
    );
    for rule in reinstalled.iter().filter(|r| r.starts_with("-A ")) {
        let copies = reinstalled.iter().filter(|r| *r == rule).count();
        ensure!(
            copies == 1,
            "rule {rule:?} appears {copies} times after two inits"
        );
    }
    for jump in [
        "-A PREROUTING -p tcp -j SHOAL_INBOUND",
        "-A OUTPUT -p tcp -j SHOAL_OUTPUT",
    ] {
        ensure!(
            reinstalled.iter().any(|r| r == jump),
            "jump {jump:?} missing after init (init printed {first_run:?}):\n{}",
            reinstalled.join("\n")
        );
    }

    // The proxy, the app and the remote server, each waited for with a deadline.
    world.spawn_peer_server()?;
    world.spawn_app()?;
    world.spawn_proxy(&proxy)?;
    world.wait_ready()?;

    // Outbound: the app (root, so not excluded) calls the peer; the rules must send it through the proxy.
    let before_out = world.counters("outbound")?;
    let url = format!("http://{PEER_IP}:{PEER_PORT}/hello.txt");
    let body = world.curl(&world.pod, &url)?;
    ensure!(
        body == PEER_BODY,
        "outbound call to {url} returned {body:?}, expected {PEER_BODY:?}"
    );
    world.wait_counted("outbound", before_out)?;

    // Inbound: the peer calls the app at the pod's address; the rules must send it through the proxy.
    let before_in = world.counters("inbound")?;
    let url = format!("http://{POD_IP}:{APP_PORT}/hello.txt");
    let body = world.curl(&world.peer, &url)?;
    ensure!(
        body == APP_BODY,
        "inbound call to {url} returned {body:?}, expected {APP_BODY:?}"
    );
    world.wait_counted("inbound", before_in)?;

    // Uninstall removes exactly what init added; doing it again with nothing installed still succeeds.
    world.init(&proxy, &["--uninstall"])?;
    let after = world.nat_rules()?;
    ensure!(
        !after.iter().any(|r| r.contains("SHOAL_")),
        "SHOAL_ rules or chains left after --uninstall:\n{}",
        after.join("\n")
    );
    ensure!(
        after == before,
        "--uninstall did not restore the nat table\nbefore:\n{}\nafter:\n{}",
        before.join("\n"),
        after.join("\n")
    );
    world.init(&proxy, &["--uninstall"])?;
    Ok(())
}

/// Why the test cannot run here, if it cannot.
fn prerequisites() -> Result<(), String> {
    let euid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .ok_or("cannot read the effective uid from /proc/self/status")?;
    if euid != "0" {
        return Err(format!("running as uid {euid}, not root"));
    }
    let missing: Vec<&str> = [
        "ip",
        "iptables",
        "iptables-save",
        "setpriv",
        "curl",
        "python3",
    ]
    .into_iter()
    .filter(|tool| find_on_path(tool).is_none())
    .collect();
    if !missing.is_empty() {
        return Err(format!("not on PATH: {}", missing.join(", ")));
    }
    // Root in a container may still lack CAP_SYS_ADMIN (netns) or a kernel nat table: probe both in a
    // throwaway namespace rather than fail later in a confusing place.
    let probe = format!("shoal-t-{}-probe", std::process::id());
    let added = run_quiet("ip", &["netns", "add", &probe]);
    let result = match added {
        Err(e) => Err(format!("cannot create a network namespace: {e}")),
        Ok(()) => run_quiet(
            "ip",
            &["netns", "exec", &probe, "iptables", "-t", "nat", "-S"],
        )
        .map_err(|e| format!("iptables' nat table is unusable in a network namespace: {e}")),
    };
    let _ = run_quiet("ip", &["netns", "del", &probe]);
    result
}

fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("`{program}`: {e}")),
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The proxy binary: `$SHOAL_PROXY_BIN`, or the workspace's debug build, built once if missing.
fn proxy_binary() -> Result<PathBuf> {
    if let Some(bin) = env::var_os("SHOAL_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate has no parent directory")?
        .to_path_buf();
    let target = match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_relative() => workspace.join(dir),
        Some(dir) => dir,
        None => workspace.join("target"),
    };
    let bin = target.join("debug").join("shoal-proxy");
    // Tests in this binary may run in parallel; only one of them should run cargo.
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !bin.is_file() {
        let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let status = Command::new(&cargo)
            .args(["build", "-p", "shoal-proxy", "--bin", "shoal-proxy"])
            .current_dir(&workspace)
            .status()
            .with_context(|| format!("running {cargo:?} build -p shoal-proxy"))?;
        ensure!(
            status.success(),
            "cargo build -p shoal-proxy --bin shoal-proxy failed ({status})"
        );
    }
    ensure!(
        bin.is_file(),
        "{} does not exist after building it",
        bin.display()
    );
    Ok(bin)
}

/// The namespaces, processes and files of one test run; dropping it kills the processes and deletes the
/// namespaces (with their veth pair and rules) even when the test fails half-way.
struct World {
    pod: String,
    peer: String,
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl World {
    fn create() -> Result<Self> {
        let id = std::process::id();
        let dir = env::temp_dir().join(format!("shoal-netns-{id}"));
        // The guard exists before the first change, so any failure below still cleans up.
        let world = Self {
            pod: format!("shoal-t-{id}"),
            peer: format!("shoal-t-{id}-peer"),
            dir,
            children: Vec::new(),
        };
        // A namespace of this name can only be left over from an earlier, killed run of this very test
        // process id; remove it so `add` succeeds.
        for ns in [&world.pod, &world.peer] {
            let _ = run_quiet("ip", &["netns", "del", ns]);
        }
        let _ = fs::remove_dir_all(&world.dir);
        for sub in ["app", "peer"] {
            fs::create_dir_all(world.dir.join(sub))?;
        }
        // The proxy runs as an unprivileged uid and may need to read a binary copied here.
        fs::set_permissions(&world.dir, fs::Permissions::from_mode(0o755))?;
        fs::write(world.dir.join("app/hello.txt"), APP_BODY)?;
        fs::write(world.dir.join("peer/hello.txt"), PEER_BODY)?;

        world.ip(&["netns", "add", &world.pod])?;
        world.ip(&["netns", "add", &world.peer])?;
        // Created from inside the pod namespace, so the interface names never meet the host's.
        world.ip(&[
            "-n",
            &world.pod,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &world.peer,
        ])?;
        for (ns, ip) in [(&world.pod, POD_IP), (&world.peer, PEER_IP)] {
            world.ip(&["-n", ns, "link", "set", "lo", "up"])?;
            world.ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            world.ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(world)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = run(Command::new("ip").args(args))?;
        ensure!(
            out.status.success(),
            "`ip {}` failed: {}",
            args.join(" "),
            out.stderr
        );
        Ok(())
    }

    /// A command run inside namespace `ns`, with no stray `SHOAL_` settings from the test's environment.
    fn in_ns(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        for (key, _) in env::vars_os() {
            if key.to_string_lossy().starts_with("SHOAL_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// `bin`, or a copy of it in the world's directory when the proxy's uid cannot execute it where it is
    /// (e.g. a target directory under a private home).
    fn runnable_by_proxy_uid(&self, bin: &Path) -> Result<PathBuf> {
        let out = run(Command::new("setpriv")
            .args(as_proxy_uid())
            .args(["sh", "-c", r#"test -r "$0" && test -x "$0""#])
            .arg(bin))?;
        if out.status.success() {
            return Ok(bin.to_path_buf());
        }
        let copy = self.dir.join("shoal-proxy");
        fs::copy(bin, &copy)
            .with_context(|| format!("copying {} for uid {PROXY_UID}", bin.display()))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
        Ok(copy)
    }

    /// Runs `shoal-proxy init` in the pod namespace (as root, like an init container) and returns its output.
    fn init(&self, proxy: &Path, flags: &[&str]) -> Result<String> {
        let out = run(self.in_ns(&self.pod, proxy).arg("init").args(flags))?;
        ensure!(
            out.status.success(),
            "`shoal-proxy init {}` failed ({}):\nstdout: {}\nstderr: {}",
            flags.join(" "),
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// The pod's nat table: chain declarations (without counters) and rules, comments dropped.
    fn nat_rules(&self) -> Result<Vec<String>> {
        let out = run(self.in_ns(&self.pod, "iptables-save").args(["-t", "nat"]))?;
        ensure!(out.status.success(), "iptables-save failed: {}", out.stderr);
        Ok(out
            .stdout
            .lines()
            .filter_map(|line| match line.chars().next() {
                Some(':') => line.split_whitespace().next().map(str::to_owned),
                Some('-') => Some(line.to_owned()),
                _ => None,
            })
            .collect())
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log = fs::File::create(self.log_path(name))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        let text = fs::read_to_string(self.log_path(name)).unwrap_or_default();
        // The end is where a failure shows; keep messages readable.
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_owned()
    }

    fn python(&self, ns: &str, port: u16, bind: &str, dir: &str) -> Command {
        let mut cmd = self.in_ns(ns, "python3");
        cmd.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            bind,
            "--directory",
        ])
        .arg(self.dir.join(dir));
        cmd
    }

    fn spawn_peer_server(&mut self) -> Result<()> {
        let cmd = self.python(&self.peer, PEER_PORT, PEER_IP, "peer");
        self.spawn("peer-server", cmd)
    }

    fn spawn_app(&mut self) -> Result<()> {
        // On every address: the proxy forwards inbound traffic to the original destination, the pod's IP.
        let cmd = self.python(&self.pod, APP_PORT, "0.0.0.0", "app");
        self.spawn("app", cmd)
    }

    fn spawn_proxy(&mut self, proxy: &Path) -> Result<()> {
        let mut cmd = self.in_ns(&self.pod, "setpriv");
        cmd.args(as_proxy_uid())
            .arg(proxy)
            .arg("run")
            .env("SHOAL_ADMIN_ADDR", ADMIN_ADDR)
            .env("SHOAL_LOG", "info");
        self.spawn("proxy", cmd)
    }

    /// Waits until the peer server, the app and the proxy all answer, failing fast if one of them exits.
    fn wait_ready(&mut self) -> Result<()> {
        let checks = [
            (
                "peer-server",
                self.peer.clone(),
                format!("http://{PEER_IP}:{PEER_PORT}/hello.txt"),
            ),
            // Loopback is never captured, so this reaches the app directly.
            (
                "app",
                self.pod.clone(),
                format!("http://127.0.0.1:{APP_PORT}/hello.txt"),
            ),
            (
                "proxy",
                self.pod.clone(),
                format!("http://{ADMIN_ADDR}/ready"),
            ),
        ];
        for (name, ns, url) in checks {
            eventually(&format!("{name} to answer {url}"), READY_TIMEOUT, || {
                self.ensure_running(name)?;
                Ok(self.curl(&ns, &url).ok())
            })
            .map_err(|e| with_log(e, name, &self.log(name)))?;
        }
        Ok(())
    }

    fn ensure_running(&mut self, name: &str) -> Result<()> {
        let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) else {
            bail!("{name} was never started");
        };
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited ({status})");
        }
        Ok(())
    }

    /// GETs `url` from inside `ns` and returns the body; a non-2xx status is an error.
    fn curl(&self, ns: &str, url: &str) -> Result<String> {
        let out = run(self
            .in_ns(ns, "curl")
            // An http_proxy in the test's environment must not divert the request.
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                url,
            ]))?;
        ensure!(
            out.status.success(),
            "curl {url} in {ns}: {}",
            out.stderr.trim()
        );
        Ok(out.stdout)
    }

    /// What the proxy has counted for `direction` so far.
    fn counters(&self, direction: &str) -> Result<Counters> {
        let text = self.curl(&self.pod, &format!("http://{ADMIN_ADDR}/metrics"))?;
        let label = format!("direction=\"{direction}\"");
        Ok(Counters {
            requests: metric_sum(&text, "shoal_requests_total", &label),
            connections: metric_sum(&text, "shoal_tcp_connections_opened_total", &label),
        })
    }

    /// Waits until the proxy's counters for `direction` exceed `before`: the call went through the proxy.
    fn wait_counted(&mut self, direction: &str, before: Counters) -> Result<()> {
        let what = format!("the proxy to count the {direction} call (before: {before:?})");
        eventually(&what, METRICS_TIMEOUT, || {
            self.ensure_running("proxy")?;
            let now = self.counters(direction)?;
            Ok(
                (now.requests > before.requests || now.connections > before.connections)
                    .then_some(()),
            )
        })
        .map_err(|e| with_log(e, "proxy", &self.log("proxy")))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.peer, &self.pod] {
            let _ = run_quiet("ip", &["netns", "del", ns]);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `error` followed by the end of a process's log, which is usually where the reason is.
fn with_log(error: anyhow::Error, name: &str, log: &str) -> anyhow::Error {
    anyhow::anyhow!("{error:#}\n--- end of the {name} log ---\n{log}")
}

/// `setpriv` arguments that drop to the proxy's uid and gid with no supplementary groups.
fn as_proxy_uid() -> [String; 3] {
    [
        format!("--reuid={PROXY_UID}"),
        format!("--regid={PROXY_UID}"),
        "--clear-groups".to_owned(),
    ]
}

/// A direction's capture evidence: HTTP requests and TCP connections the proxy handled.
#[derive(Debug, Clone, Copy)]
struct Counters {
    requests: f64,
    connections: f64,
}

/// Sums every series of the counter `name` whose labels contain `label` (Prometheus text format).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once('}')?;
            if !labels.contains(label) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .fold(0.0, |sum, value| sum + value)
}

/// Polls `check` until it yields a value or `timeout` passes; an `Err` from `check` stops at once.
fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, killing it if it takes longer than [`COMMAND_TIMEOUT`].
fn run(cmd: &mut Command) -> Result<Finished> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    // Read both pipes on threads so a chatty command cannot block on a full pipe while we wait for it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}
