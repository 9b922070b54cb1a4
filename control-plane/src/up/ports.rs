//! Which loopback ports the mesh uses, and remembering them for the next run.
//!
//! Fixed, memorable ports make the printed commands easy to reuse (and put the control plane's Admin API on
//! 15011, `shoalctl`'s default), but a demo must not fail because something else holds one of them. So:
//!
//! - no `--base-port`, and the data directory remembers ports (`ports.json`, written by every run): exactly
//!   those, and an error naming the port and what holds it if one is busy;
//! - no `--base-port`, nothing remembered: the layout below from 15000, each port that is busy replaced by a
//!   free one (the user is told which, and by what it was held) — unless a Shoal program holds it (another
//!   `shoal up`, or what an old one left running): that is an error naming it, not a silent move;
//! - `--base-port N`: exactly that layout from N, and an error naming the holder if a port is busy;
//! - `--base-port 0`: free ports (what tests use).
//!
//! Layout from base B: control plane B+10 (discovery), B+11 (admin), B+14 (metrics), the same offsets as
//! a production control plane; workload *k* (1-based) B+100k (app), +1 (sidecar outbound), +6 (sidecar
//! inbound), +21 (sidecar admin), the offsets of a production sidecar.
//!
//! A port is checked by binding it and letting go, so another process could take it before its owner binds
//! it; the owner then fails to start and `shoal up` reports which port and why. Free ports (`--base-port 0`,
//! and the replacements of busy ones) are therefore chosen at random *below* the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default): the local ports of outgoing connections and the
//! ports of other programs' listeners on port 0 come from that range, and a busy machine — tests running in
//! parallel — hands them out all the time, so a port checked there was taken before its owner bound it.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use super::holder;

/// The base of the default layout: the control plane on 15010, 15011 and 15014.
pub(crate) const DEFAULT_BASE: u16 = 15000;

/// The file in the data directory that remembers the ports of the last run.
pub(crate) const FILE: &str = "ports.json";

/// How ports are chosen (see the module docs).
#[derive(Debug)]
enum Mode {
    /// The layout from `base`; `strict`: a busy port is an error, else it is replaced.
    Layout { base: u16, strict: bool },
    /// Free ports chosen by the OS.
    Any,
    /// The ports a previous run used, by use; a busy one is an error.
    Remembered {
        ports: BTreeMap<String, u16>,
        file: PathBuf,
    },
}

/// A preferred port that was busy, and what was used instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Moved {
    /// The port of the layout.
    pub(crate) wanted: u16,
    /// The port used instead.
    pub(crate) used: u16,
    /// Who held the wanted one (`port 15106 (...) is in use by nginx (pid 12)`).
    pub(crate) why: String,
}

/// Hands out ports according to the mode chosen by `--base-port` and the data directory.
#[derive(Debug)]
pub(crate) struct Ports {
    mode: Mode,
    given: HashSet<u16>,
    /// Every port handed out, by use: what [`Self::save`] remembers.
    chosen: BTreeMap<String, u16>,
    /// Preferred ports that were busy, with what was used instead (to tell the user).
    pub(crate) moved: Vec<Moved>,
}

impl Ports {
    /// `base_port` as given on the command line; without one, the ports remembered in `data_dir` if any.
    pub(crate) fn choose(base_port: Option<u16>, data_dir: &Path) -> Result<Self, String> {
        let file = data_dir.join(FILE);
        let mode = match base_port {
            Some(0) => Mode::Any,
            Some(base) => Mode::Layout { base, strict: true },
            None => match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let ports = serde_json::from_str(&text).map_err(|e| {
                        format!(
                            "{} is not a port list ({e}): delete it, or pass --base-port N (0 picks free ports)",
                            file.display()
                        )
                    })?;
                    Mode::Remembered { ports, file }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Mode::Layout {
                    base: DEFAULT_BASE,
                    strict: false,
                },
                Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
            },
        };
        Ok(Self::with_mode(mode))
    }

    fn with_mode(mode: Mode) -> Self {
        Self {
            mode,
            given: HashSet::new(),
            chosen: BTreeMap::new(),
            moved: Vec::new(),
        }
    }

    /// Where the ports came from, for the start-up progress.
    pub(crate) fn origin(&self) -> String {
        match &self.mode {
            Mode::Layout { base, strict: true } => format!("the layout from --base-port {base}"),
            Mode::Layout { base, .. } => format!("the default layout from {base}"),
            Mode::Any => "free ports (--base-port 0)".to_owned(),
            Mode::Remembered { file, .. } => format!("the last run's, from {}", file.display()),
        }
    }

    /// The port at `offset` from the base (or the one remembered for `what`), or a free one; `what` names
    /// its use in errors and in `ports.json`.
    pub(crate) fn take(&mut self, offset: u16, what: &str) -> Result<u16, String> {
        let port = self.pick(offset, what)?;
        self.given.insert(port);
        self.chosen.insert(what.to_owned(), port);
        Ok(port)
    }

    fn pick(&mut self, offset: u16, what: &str) -> Result<u16, String> {
        let (wanted, strict_hint) = match &self.mode {
            Mode::Any => return self.free(what),
            Mode::Remembered { ports, file } => match ports.get(what) {
                Some(port) => (
                    *port,
                    Some(format!(
                        "this data directory's ports are remembered in {} from its last run: stop what holds it, or pass --base-port N for a new layout (0 picks free ports)",
                        file.display()
                    )),
                ),
                // A workload the last run did not have: where the default layout puts it.
                None => (layout_port(DEFAULT_BASE, offset, what)?, None),
            },
            Mode::Layout { base, strict } => (
                layout_port(*base, offset, what)?,
                strict.then(|| {
                    "stop what holds it, or choose another --base-port (0 picks free ports)"
                        .to_owned()
                }),
            ),
        };
        if !self.given.contains(&wanted) && is_free(wanted) {
            return Ok(wanted);
        }
        let holder = holder::find(wanted);
        let why = holder::busy_message(wanted, what, holder.as_ref());
        if let Some(hint) = strict_hint {
            return Err(format!("{why}: {hint}"));
        }
        if holder.as_ref().is_some_and(holder::Holder::is_shoal) {
            return Err(format!(
                "{why}: another `shoal up` is running, or an earlier one left it behind; stop it, or pass --base-port N (0 picks free ports)"
            ));
        }
        let used = self.free(what)?;
        self.moved.push(Moved { wanted, used, why });
        Ok(used)
    }

    /// A free port, never one handed out already: at random below the ephemeral range (module docs), or
    /// from the OS when that range leaves no room below it.
    fn free(&self, what: &str) -> Result<u16, String> {
        let below = QUIET_FROM..ephemeral_start();
        for _ in 0..100 {
            let port = if below.is_empty() {
                ephemeral().map_err(|e| format!("cannot find a free port for {what}: {e}"))?
            } else {
                fastrand::u16(below.clone())
            };
            if !self.given.contains(&port) && is_free(port) {
                return Ok(port);
            }
        }
        Err(format!("cannot find a free port for {what}"))
    }

    /// Remembers every port handed out in `data_dir`, for the next run.
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), String> {
        let file = data_dir.join(FILE);
        let text = serde_json::to_string_pretty(&self.chosen).map_err(|e| e.to_string())?;
        std::fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))
    }
}

fn layout_port(base: u16, offset: u16, what: &str) -> Result<u16, String> {
    base.checked_add(offset)
        .filter(|p| *p < u16::MAX)
        .ok_or_else(|| format!("--base-port {base} is too high: {what} would be past port 65534"))
}

/// The lowest free port chosen: above the fixed ports services usually take.
const QUIET_FROM: u16 = 10000;

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn ephemeral() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_base_names_the_holder_of_a_busy_port_and_default_moves_it() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let busy = held.local_addr().expect("addr").port();
        let base = busy - 11;
        let error = Ports::with_mode(Mode::Layout { base, strict: true })
            .take(11, "the admin API")
            .unwrap_err();
        let pid = std::process::id();
        assert!(
            error.contains(&format!("port {busy} (the admin API) is in use by "))
                && error.contains(&format!("(pid {pid}): stop what holds it")),
            "{error}"
        );
        let mut lenient = Ports::with_mode(Mode::Layout {
            base,
            strict: false,
        });
        let port = lenient.take(11, "the admin API").expect("a free port");
        assert_ne!(port, busy);
        assert_eq!(lenient.moved.len(), 1);
        assert_eq!(
            (lenient.moved[0].wanted, lenient.moved[0].used),
            (busy, port)
        );
        assert!(lenient.moved[0].why.contains(&format!("(pid {pid})")));
    }

    #[test]
    fn any_mode_never_repeats_and_stays_below_the_ephemeral_range() {
        let mut ports = Ports::with_mode(Mode::Any);
        let taken: HashSet<u16> = (0..50)
            .map(|i| ports.take(1, &format!("use {i}")).expect("port"))
            .collect();
        assert_eq!(taken.len(), 50);
        assert!(ports.moved.is_empty());
        let start = ephemeral_start();
        assert!(
            taken.iter().all(|p| (QUIET_FROM..start).contains(p)),
            "{taken:?} not all in {QUIET_FROM}..{start}"
        );
    }

    #[test]
    fn a_data_directory_remembers_its_ports_and_refuses_to_move_them() {
        let dir = tempfile::tempdir().expect("dir");
        let mut first = Ports::choose(Some(0), dir.path()).expect("ports");
        let (a, b) = (
            first.take(10, "control plane discovery").expect("port"),
            first.take(200, "backend-v1 app").expect("port"),
        );
        first.save(dir.path()).expect("saved");

        let mut again = Ports::choose(None, dir.path()).expect("remembered");
        assert!(again.origin().contains(FILE), "{}", again.origin());
        assert_eq!(again.take(10, "control plane discovery"), Ok(a));
        assert_eq!(again.take(200, "backend-v1 app"), Ok(b));

        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, a)).expect("bind the remembered port");
        let error = Ports::choose(None, dir.path())
            .expect("remembered")
            .take(10, "control plane discovery")
            .unwrap_err();
        assert!(
            error.contains(&format!("port {a} (control plane discovery) is in use by "))
                && error.contains("remembered in")
                && error.contains("--base-port"),
            "{error}"
        );
        drop(held);

        std::fs::write(dir.path().join(FILE), "not json").expect("write");
        let error = Ports::choose(None, dir.path()).unwrap_err();
        assert!(error.contains("is not a port list"), "{error}");
    }
}
