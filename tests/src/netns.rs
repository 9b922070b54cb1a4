//! Network-namespace worlds for the tests that need the real iptables capture of
//! `shoal-proxy init` (root only).
//!
//! A [`World`] owns two namespaces joined by a veth pair, 10.200.0.2 ([`World::pod`]) ↔ 10.200.0.1
//! ([`World::peer`]), a scratch directory, and every process started in them; dropping it kills
//! the processes and deletes the namespaces (with their veth pair and rules), even when a test
//! fails half-way, so nothing touches the host's network.
//!
//! Tests call [`prerequisites`] first and pass with a `skipped: …` message when it fails (not
//! root, a tool missing, no netns or nat table in this kernel).

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

/// The pod namespace's address.
pub const POD_IP: &str = "10.200.0.2";
/// The peer namespace's address.
pub const PEER_IP: &str = "10.200.0.1";
/// init's default `--proxy-uid`; proxies run as this uid so their own connections are not
/// captured.
pub const PROXY_UID: u32 = 1337;

/// Longest wait for a process to become ready; generous because a debug proxy on a loaded
/// 2-core CI machine can take a while to start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a metric to reflect a request that already got its response.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any single helper command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the test cannot run here, if it cannot.
pub fn prerequisites() -> Result<(), String> {
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
    // Root in a container may still lack CAP_SYS_ADMIN (netns) or a kernel nat table: probe both
    // in a throwaway namespace rather than fail later in a confusing place.
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
pub fn proxy_binary() -> Result<PathBuf> {
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

/// The namespaces, processes and files of one test run (see the module docs).
pub struct World {
    /// The pod namespace (10.200.0.2).
    pub pod: String,
    /// The peer namespace (10.200.0.1).
    pub peer: String,
    /// Scratch directory, readable by the proxies' uid.
    pub dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl World {
    /// Creates both namespaces and the veth pair; `tag` keeps the names of concurrently running
    /// tests apart.
    pub fn create(tag: &str) -> Result<Self> {
        let id = std::process::id();
        let dir = env::temp_dir().join(format!("shoal-netns-{tag}-{id}"));
        // The guard exists before the first change, so any failure below still cleans up.
        let world = Self {
            pod: format!("shoal-{tag}-{id}"),
            peer: format!("shoal-{tag}-{id}-peer"),
            dir,
            children: Vec::new(),
        };
        // A namespace of this name can only be left over from an earlier, killed run of this
        // very test process id; remove it so `add` succeeds.
        for ns in [&world.pod, &world.peer] {
            let _ = run_quiet("ip", &["netns", "del", ns]);
        }
        let _ = fs::remove_dir_all(&world.dir);
        fs::create_dir_all(&world.dir)?;
        // The proxies run as an unprivileged uid and may need to read files placed here.
        fs::set_permissions(&world.dir, fs::Permissions::from_mode(0o755))?;

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

    /// A command run inside namespace `ns`, with no stray `SHOAL_` settings from the test's
    /// environment.
    pub fn in_ns(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
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

    /// `bin`, or a copy of it in the world's directory when the proxy's uid cannot execute it
    /// where it is (e.g. a target directory under a private home).
    pub fn runnable_by_proxy_uid(&self, bin: &Path) -> Result<PathBuf> {
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

    /// Writes `text` to `name` in the world's directory, owned by the proxies' uid with mode
    /// 0600 (a key file the proxy must read and nobody else).
    pub fn write_for_proxy(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, text)?;
        std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID))
            .with_context(|| format!("chown {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    /// Runs `shoal-proxy init` in `ns` (as root, like an init container) and returns its output.
    pub fn init(&self, ns: &str, proxy: &Path, flags: &[&str]) -> Result<String> {
        let out = run(self.in_ns(ns, proxy).arg("init").args(flags))?;
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

    /// The nat table of `ns`: chain declarations (without counters) and rules, comments dropped.
    pub fn nat_rules(&self, ns: &str) -> Result<Vec<String>> {
        let out = run(self.in_ns(ns, "iptables-save").args(["-t", "nat"]))?;
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

    /// Runs `cmd` to completion and returns its standard output; a failure is an error that
    /// names `what` and carries the command's standard error.
    pub fn output(&self, what: &str, cmd: &mut Command) -> Result<String> {
        let out = run(cmd)?;
        ensure!(
            out.status.success(),
            "{what} failed ({}): {}",
            out.status,
            out.stderr.trim()
        );
        Ok(out.stdout)
    }

    /// Starts `cmd` as the process `name`, its output in `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log = fs::File::create(self.log_path(name))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The end of process `name`'s log, where a failure usually shows.
    pub fn log(&self, name: &str) -> String {
        let text = fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_owned()
    }

    /// Starts `proxy run` in `ns` as the proxies' uid, with `env` (its admin address among them).
    pub fn spawn_proxy(
        &mut self,
        ns: &str,
        name: &str,
        proxy: &Path,
        env: &[(&str, String)],
    ) -> Result<()> {
        let mut cmd = self.in_ns(ns, "setpriv");
        cmd.args(as_proxy_uid())
            .arg(proxy)
            .arg("run")
            .env("SHOAL_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.spawn(name, cmd)
    }

    /// Waits until `url`, fetched from inside `ns`, answers with a 2xx; fails fast if process
    /// `name` exits meanwhile.
    pub fn wait_answering(&mut self, name: &str, ns: &str, url: &str) -> Result<()> {
        eventually(&format!("{name} to answer {url}"), READY_TIMEOUT, || {
            self.ensure_running(name)?;
            Ok(self.curl(ns, url).ok().map(drop))
        })
        .map_err(|e| with_log(e, name, &self.log(name)))
    }

    /// Fails if process `name` has exited.
    pub fn ensure_running(&mut self, name: &str) -> Result<()> {
        let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) else {
            bail!("{name} was never started");
        };
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited ({status})");
        }
        Ok(())
    }

    /// GETs `url` from inside `ns` and returns the body; a non-2xx status is an error.
    pub fn curl(&self, ns: &str, url: &str) -> Result<String> {
        self.curl_as(ns, url, None)
    }

    /// [`Self::curl`], run as uid `uid` when given (the proxies' uid is never captured).
    pub fn curl_as(&self, ns: &str, url: &str, uid: Option<u32>) -> Result<String> {
        let mut cmd = match uid {
            Some(uid) => {
                let mut c = self.in_ns(ns, "setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_owned(),
                    "curl".to_owned(),
                ]);
                c
            }
            None => self.in_ns(ns, "curl"),
        };
        // An http_proxy in the test's environment must not divert the request.
        let out = run(cmd.args([
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
pub fn with_log(error: anyhow::Error, name: &str, log: &str) -> anyhow::Error {
    anyhow::anyhow!("{error:#}\n--- end of the {name} log ---\n{log}")
}

/// `setpriv` arguments that drop to the proxies' uid and gid with no supplementary groups.
fn as_proxy_uid() -> [String; 3] {
    [
        format!("--reuid={PROXY_UID}"),
        format!("--regid={PROXY_UID}"),
        "--clear-groups".to_owned(),
    ]
}

/// Sums every series of the counter `name` whose labels contain every one of `labels`
/// (Prometheus text format).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (series, value) = rest.rsplit_once('}')?;
            if !labels.iter().all(|l| series.contains(l)) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .fold(0.0, |sum, value| sum + value)
}

/// Polls `check` until it yields a value or `timeout` passes; an `Err` from `check` stops at
/// once. (Blocking, unlike [`crate::eventually`]: these tests drive processes, not futures.)
pub fn eventually<T>(
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
    // Read both pipes on threads so a chatty command cannot block on a full pipe while we wait.
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
