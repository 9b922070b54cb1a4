//! Who holds a TCP port: the listening socket's inode from `/proc/net/tcp{,6}`, then the process whose
//! `/proc/<pid>/fd` links to `socket:[inode]`. Best effort: another user's processes cannot be read, and
//! the answer may be stale a moment later; it is only for telling the user what to stop.

use std::fs;

/// A process that holds a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Its process id.
    pub(crate) pid: u32,
    /// Its program's name (the file name of its `argv[0]`, else `/proc/<pid>/comm`), e.g. `shoal-proxy`.
    pub(crate) name: String,
}

impl Holder {
    /// Whether it is one of the programs `shoal up` runs (a sidecar, a control plane, a demo app or
    /// another `shoal up`).
    pub(crate) fn is_shoal(&self) -> bool {
        ["shoal", "shoal-proxy", "shoal-control-plane"].contains(&self.name.as_str())
    }
}

/// The process holding `port` on this host, if it can be found.
pub(crate) fn find(port: u16) -> Option<Holder> {
    let inodes = socket_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    let links: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        // Another user's process: its fd directory is unreadable, skip it.
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| {
                target
                    .to_str()
                    .is_some_and(|t| links.iter().any(|l| l == t))
            })
        });
        if holds {
            return Some(Holder {
                pid,
                name: program_name(&proc_entry.path()),
            });
        }
    }
    None
}

/// The file name of the process's `argv[0]`; its `comm` (cut at 15 bytes) if that is unreadable.
fn program_name(proc_dir: &std::path::Path) -> String {
    let argv0 = fs::read(proc_dir.join("cmdline")).ok().and_then(|cmdline| {
        let first = cmdline.split(|b| *b == 0).next()?;
        let path = String::from_utf8_lossy(first).into_owned();
        let name = path.rsplit('/').next()?.to_owned();
        (!name.is_empty()).then_some(name)
    });
    argv0.unwrap_or_else(|| {
        fs::read_to_string(proc_dir.join("comm"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned())
    })
}

/// `port` described for a message: `port 15106 (frontend sidecar inbound) is in use by shoal-proxy (pid
/// 4242)`, or `... is in use (by a process this user cannot see)`.
pub(crate) fn busy_message(port: u16, what: &str, holder: Option<&Holder>) -> String {
    match holder {
        Some(h) => format!(
            "port {port} ({what}) is in use by {} (pid {})",
            h.name, h.pid
        ),
        None => format!("port {port} ({what}) is in use (by a process this user cannot see)"),
    }
}

/// Inodes of the sockets bound to `port` (IPv4 and IPv6), listening ones first.
fn socket_inodes(port: u16) -> Vec<u64> {
    let mut listening = Vec::new();
    let mut other = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for (local_port, state, inode) in text.lines().skip(1).filter_map(parse_line) {
            // Inode 0: a socket in TIME_WAIT, owned by no process.
            if local_port != port || inode == 0 {
                continue;
            }
            if state == LISTEN {
                listening.push(inode);
            } else {
                other.push(inode);
            }
        }
    }
    listening.extend(other);
    listening
}

/// The `st` value of a listening socket in `/proc/net/tcp`.
const LISTEN: u8 = 0x0A;

/// `sl local_address rem_address st ... uid timeout inode`: the local port, the state and the inode.
fn parse_line(line: &str) -> Option<(u16, u8, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields.get(1)?.rsplit_once(':')?.1;
    let port = u16::from_str_radix(port, 16).ok()?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((port, state, inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        let line = "   3: 0100007F:3B1A 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_line(line), Some((15130, LISTEN, 123_456)));
        let v6 = "   0: 00000000000000000000000001000000:3B1A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_line(v6), Some((15130, LISTEN, 42)));
        assert_eq!(parse_line("  sl  local_address rem_address"), None);
    }

    #[test]
    fn finds_this_process_holding_a_port() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let holder = find(port).expect("found");
        assert_eq!(holder.pid, std::process::id());
        assert!(
            !holder.is_shoal(),
            "a test binary is not one of shoal up's programs: {holder:?}"
        );
        let message = busy_message(port, "the admin API", Some(&holder));
        assert!(
            message.starts_with(&format!("port {port} (the admin API) is in use by ")),
            "{message}"
        );
        assert!(message.ends_with(&format!("(pid {})", std::process::id())));
        drop(held);
        assert_eq!(find(port), None);
    }
}
