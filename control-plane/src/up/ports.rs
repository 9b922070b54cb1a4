//! Which loopback ports the mesh uses.
//!
//! Fixed, memorable ports make the printed commands easy to reuse (and put the control plane's Admin API on
//! 15011, `shoalctl`'s default), but a demo must not fail because something else holds one of them. So:
//!
//! - no `--base-port`: the layout below from 15000, each port that is busy replaced by a free one;
//! - `--base-port N`: exactly that layout from N, and a clear error if a port is busy;
//! - `--base-port 0`: free ports chosen by the OS (what tests use).
//!
//! Layout from base B: control plane B+10 (discovery), B+11 (admin), B+14 (metrics), the same offsets as
//! a production control plane; workload *k* (1-based) B+100k (app), +1 (sidecar outbound), +6 (sidecar
//! inbound), +21 (sidecar admin), the offsets of a production sidecar.
//!
//! A port is checked by binding it and letting go, so another process could take it before its owner binds
//! it; the owner then fails to start and `shoal up` reports which port and why.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

/// The base of the default layout: the control plane on 15010, 15011 and 15014.
pub const DEFAULT_BASE: u16 = 15000;

/// Hands out ports according to the mode chosen by `--base-port`.
#[derive(Debug)]
pub struct Ports {
    base: Option<u16>,
    strict: bool,
    given: HashSet<u16>,
    /// Preferred ports that were busy, with what was used instead (to tell the user).
    pub moved: Vec<(u16, u16)>,
}

impl Ports {
    /// `base_port` as given on the command line (see the module docs).
    pub fn new(base_port: Option<u16>) -> Self {
        let (base, strict) = match base_port {
            None => (Some(DEFAULT_BASE), false),
            Some(0) => (None, false),
            Some(base) => (Some(base), true),
        };
        Self {
            base,
            strict,
            given: HashSet::new(),
            moved: Vec::new(),
        }
    }

    /// The port at `offset` from the base, or a free one; `what` names its use in errors.
    pub fn take(&mut self, offset: u16, what: &str) -> Result<u16, String> {
        let wanted = match self.base {
            None => None,
            Some(base) => Some(
                base.checked_add(offset)
                    .filter(|p| *p < u16::MAX)
                    .ok_or_else(|| {
                        format!("--base-port {base} is too high: {what} would be past port 65534")
                    })?,
            ),
        };
        if let Some(port) = wanted {
            if !self.given.contains(&port) && is_free(port) {
                self.given.insert(port);
                return Ok(port);
            }
            if self.strict {
                return Err(format!(
                    "port {port} ({what}) is in use: stop what holds it, or choose another --base-port (0 picks free ports)"
                ));
            }
        }
        // The OS rarely hands out the same ephemeral port twice in a row, but it may: skip repeats.
        for _ in 0..100 {
            let port =
                ephemeral().map_err(|e| format!("cannot find a free port for {what}: {e}"))?;
            if self.given.insert(port) {
                if let Some(wanted) = wanted {
                    self.moved.push((wanted, port));
                }
                return Ok(port);
            }
        }
        Err(format!("cannot find a free port for {what}"))
    }
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
    fn strict_base_reports_a_busy_port_and_default_moves_it() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let busy = held.local_addr().expect("addr").port();
        let base = busy - 11;
        let error = Ports::new(Some(base))
            .take(11, "the admin API")
            .unwrap_err();
        assert!(
            error.contains(&format!("port {busy} (the admin API) is in use")),
            "{error}"
        );
        let mut lenient = Ports {
            base: Some(base),
            strict: false,
            given: HashSet::new(),
            moved: Vec::new(),
        };
        let port = lenient.take(11, "the admin API").expect("a free port");
        assert_ne!(port, busy);
        assert_eq!(lenient.moved, vec![(busy, port)]);
    }

    #[test]
    fn any_mode_never_repeats() {
        let mut ports = Ports::new(Some(0));
        let a = ports.take(1, "a").expect("port");
        let b = ports.take(1, "b").expect("port");
        assert_ne!(a, b);
        assert!(ports.moved.is_empty());
    }
}
