//! The `shoal.io/` annotations (and the `shoal.io/inject` label) a pod may carry, each checked the way the
//! setting it becomes is checked by the proxy or `shoal-proxy init`, so a bad value is refused at admission,
//! naming the annotation, instead of crash-looping a container later.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::quantity;

/// Label or annotation: `enabled` or `disabled`; on a pod it wins over its namespace's label.
pub const INJECT: &str = "shoal.io/inject";
/// Inbound destination ports never captured (`shoal-proxy init --exclude-inbound-ports`).
pub const EXCLUDE_INBOUND_PORTS: &str = "shoal.io/exclude-inbound-ports";
/// Outbound destination ports never captured (`--exclude-outbound-ports`).
pub const EXCLUDE_OUTBOUND_PORTS: &str = "shoal.io/exclude-outbound-ports";
/// Outbound destination IPv4 ranges never captured (`--exclude-outbound-cidrs`).
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "shoal.io/exclude-outbound-cidrs";
/// The proxy container's CPU request.
pub const PROXY_CPU_REQUEST: &str = "shoal.io/proxy-cpu-request";
/// The proxy container's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "shoal.io/proxy-cpu-limit";
/// The proxy container's memory request.
pub const PROXY_MEMORY_REQUEST: &str = "shoal.io/proxy-memory-request";
/// The proxy container's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "shoal.io/proxy-memory-limit";
/// The proxy's log filter (`SHOAL_LOG`).
pub const PROXY_LOG_LEVEL: &str = "shoal.io/proxy-log-level";
/// Ports whose servers speak first (`SHOAL_SERVER_FIRST_PORTS`), replacing the proxy's default list.
pub const SERVER_FIRST_PORTS: &str = "shoal.io/server-first-ports";
/// Written by the injector: the control plane's trust anchors (PEM), which the proxy reads as a file
/// through a downward API volume.
pub const TRUST_ANCHORS: &str = "shoal.io/trust-anchors";

/// Every `shoal.io/` annotation the injector reads or writes; any other is refused as a likely typo.
pub const ALL: &[&str] = &[
    INJECT,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    SERVER_FIRST_PORTS,
    TRUST_ANCHORS,
];

/// What a pod's annotations change in its sidecar; each value already checked and normalised.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub(crate) exclude_inbound_ports: Option<String>,
    pub(crate) exclude_outbound_ports: Option<String>,
    pub(crate) exclude_outbound_cidrs: Option<String>,
    pub(crate) cpu_request: Option<String>,
    pub(crate) cpu_limit: Option<String>,
    pub(crate) memory_request: Option<String>,
    pub(crate) memory_limit: Option<String>,
    pub(crate) log_level: Option<String>,
    pub(crate) server_first_ports: Option<String>,
}

/// Reads and checks every `shoal.io/` annotation; the error names the first bad one.
pub(crate) fn read(annotations: Option<&Map<String, Value>>) -> Result<Overrides, String> {
    let mut overrides = Overrides::default();
    let Some(annotations) = annotations else {
        return Ok(overrides);
    };
    for (key, value) in annotations {
        if !key.starts_with("shoal.io/") {
            continue;
        }
        let Some(text) = value.as_str() else {
            return Err(format!(
                "annotation {key}: expected a string value (quote it in YAML), got {value}"
            ));
        };
        let invalid = |why: String| format!("annotation {key}={text:?}: {why}");
        let slot = match key.as_str() {
            EXCLUDE_INBOUND_PORTS => &mut overrides.exclude_inbound_ports,
            EXCLUDE_OUTBOUND_PORTS => &mut overrides.exclude_outbound_ports,
            EXCLUDE_OUTBOUND_CIDRS => &mut overrides.exclude_outbound_cidrs,
            PROXY_CPU_REQUEST => &mut overrides.cpu_request,
            PROXY_CPU_LIMIT => &mut overrides.cpu_limit,
            PROXY_MEMORY_REQUEST => &mut overrides.memory_request,
            PROXY_MEMORY_LIMIT => &mut overrides.memory_limit,
            PROXY_LOG_LEVEL => &mut overrides.log_level,
            SERVER_FIRST_PORTS => &mut overrides.server_first_ports,
            // Checked by the opt-in decision, or written by the injector itself.
            INJECT | TRUST_ANCHORS => continue,
            _ => {
                return Err(format!(
                    "unknown annotation {key}: the sidecar injector reads {}",
                    ALL.join(", ")
                ));
            }
        };
        let checked = match key.as_str() {
            EXCLUDE_INBOUND_PORTS | EXCLUDE_OUTBOUND_PORTS => ports(text, true),
            SERVER_FIRST_PORTS => ports(text, false),
            EXCLUDE_OUTBOUND_CIDRS => cidrs(text),
            PROXY_LOG_LEVEL => check_log_filter(text).map(|()| text.trim().to_owned()),
            _ => quantity::parse(text.trim()).map(|_| text.trim().to_owned()),
        };
        *slot = Some(checked.map_err(invalid)?);
    }
    Ok(overrides)
}

/// `EnvFilter` syntax, as the proxy parses `SHOAL_LOG` (an empty filter is refused there too).
pub(crate) fn check_log_filter(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("expected a log filter such as info or info,shoal_proxy=debug".to_owned());
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text.trim())
        .map(drop)
        .map_err(|e| format!("{e}: expected a log filter such as info or info,shoal_proxy=debug"))
}

/// A comma-separated port list, normalised (`22, 8443,` → `22,8443`). `empty_ok`: an empty list means
/// "none"; the server-first list must name ports, since an empty value would fall back to the proxy's default.
fn ports(text: &str, empty_ok: bool) -> Result<String, String> {
    let mut out: Vec<u16> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(port) if port != 0 => {
                if !out.contains(&port) {
                    out.push(port);
                }
            }
            _ => {
                return Err(format!(
                    "`{item}` is not a port: expected comma-separated ports from 1 to 65535, e.g. 22,8443"
                ));
            }
        }
    }
    if out.is_empty() && !empty_ok {
        return Err("expected at least one port, e.g. 3306,5432".to_owned());
    }
    Ok(out.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
}

/// A comma-separated list of IPv4 ranges or addresses, as `shoal-proxy init --exclude-outbound-cidrs` reads
/// them. IPv6 ranges are refused: the injected init container installs IPv4 rules only, and `init` itself
/// refuses an IPv6 range without `--ipv6` (the container would fail, and the pod never start).
fn cidrs(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected IPv4 ranges or addresses such as 10.0.0.0/8,169.254.169.254";
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (addr, prefix) = match item.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (item, None),
        };
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {}
            Ok(IpAddr::V6(_)) => {
                return Err(format!(
                    "`{item}` is an IPv6 range: the injected init container captures IPv4 only; {EXPECTED}"
                ));
            }
            Err(_) => return Err(format!("`{item}` is not an address range: {EXPECTED}")),
        }
        if let Some(prefix) = prefix
            && prefix.parse::<u8>().map_or(true, |p| p > 32)
        {
            return Err(format!(
                "`{item}` has an invalid prefix length (0 to 32): {EXPECTED}"
            ));
        }
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out.join(","))
}
