//! Proxy configuration: every setting, its default, and how it is read.
//!
//! Settings come from `SHOAL_`-prefixed environment variables (what the sidecar injector sets)
//! and/or a YAML file named by `SHOAL_CONFIG`; the environment wins. Reading is split in two, as
//! in ztunnel: [`Source`] gathers raw strings from wherever they live (a map in tests), and
//! [`Config::from_source`] turns them into typed settings, failing with an error that names the
//! setting, the value and what was expected. docs/configuration.md documents every setting.

mod control_plane;
mod identity;
mod parse;
mod tracing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use parse::ConfigError;
use parse::{Reader, parse_ports};
pub use tracing::TracingConfig;

/// Names of every environment variable, in one place.
pub mod env {
    /// YAML file with the same settings (keys without the prefix, lower-case).
    pub const CONFIG: &str = "SHOAL_CONFIG";
    pub const OUTBOUND_ADDR: &str = "SHOAL_OUTBOUND_ADDR";
    pub const OUTBOUND_MODE: &str = "SHOAL_OUTBOUND_MODE";
    pub const OUTBOUND_TARGET: &str = "SHOAL_OUTBOUND_TARGET";
    pub const INBOUND_ADDR: &str = "SHOAL_INBOUND_ADDR";
    pub const INBOUND_MODE: &str = "SHOAL_INBOUND_MODE";
    pub const INBOUND_APP_ADDR: &str = "SHOAL_INBOUND_APP_ADDR";
    pub const ADMIN_ADDR: &str = "SHOAL_ADMIN_ADDR";
    pub const MAX_CONNECTIONS: &str = "SHOAL_MAX_CONNECTIONS";
    pub const WORKER_THREADS: &str = "SHOAL_WORKER_THREADS";
    pub const DETECT_TIMEOUT: &str = "SHOAL_DETECT_TIMEOUT";
    pub const SERVER_FIRST_PORTS: &str = "SHOAL_SERVER_FIRST_PORTS";
    pub const MAX_HEADER_BYTES: &str = "SHOAL_MAX_HEADER_BYTES";
    pub const MAX_HEADERS: &str = "SHOAL_MAX_HEADERS";
    pub const HEADER_READ_TIMEOUT: &str = "SHOAL_HEADER_READ_TIMEOUT";
    pub const IDLE_TIMEOUT: &str = "SHOAL_IDLE_TIMEOUT";
    pub const H2_MAX_CONCURRENT_STREAMS: &str = "SHOAL_H2_MAX_CONCURRENT_STREAMS";
    pub const CONNECT_TIMEOUT: &str = "SHOAL_CONNECT_TIMEOUT";
    pub const RESPONSE_TIMEOUT: &str = "SHOAL_RESPONSE_TIMEOUT";
    pub const UPSTREAM_IDLE_TIMEOUT: &str = "SHOAL_UPSTREAM_IDLE_TIMEOUT";
    pub const MIRROR_MAX_IN_FLIGHT: &str = "SHOAL_MIRROR_MAX_IN_FLIGHT";
    pub const STATE_FILE: &str = "SHOAL_STATE_FILE";
    pub const SERVICE_NAME: &str = "SHOAL_SERVICE_NAME";
    pub const ZONE: &str = "SHOAL_ZONE";
    pub const LOG: &str = "SHOAL_LOG";
    pub const LOG_FORMAT: &str = "SHOAL_LOG_FORMAT";
    pub const ACCESS_LOG: &str = "SHOAL_ACCESS_LOG";
    pub const SHUTDOWN_GRACE: &str = "SHOAL_SHUTDOWN_GRACE";
    pub const DISCOVERY_ADDR: &str = "SHOAL_DISCOVERY_ADDR";
    pub const DISCOVERY_TIMEOUT: &str = "SHOAL_DISCOVERY_TIMEOUT";
    pub const PROXY_ID: &str = "SHOAL_PROXY_ID";
    pub const NAMESPACE: &str = "SHOAL_NAMESPACE";
    pub const SERVICE_ACCOUNT: &str = "SHOAL_SERVICE_ACCOUNT";
    pub const IDENTITY_ADDR: &str = "SHOAL_IDENTITY_ADDR";
    pub const IDENTITY_TOKEN: &str = "SHOAL_IDENTITY_TOKEN";
    pub const IDENTITY_TOKEN_FILE: &str = "SHOAL_IDENTITY_TOKEN_FILE";
    pub const IDENTITY_TOKEN_KIND: &str = "SHOAL_IDENTITY_TOKEN_KIND";
    pub const IDENTITY_CERT_FILE: &str = "SHOAL_IDENTITY_CERT_FILE";
    pub const IDENTITY_KEY_FILE: &str = "SHOAL_IDENTITY_KEY_FILE";
    pub const IDENTITY_TRUST_BUNDLE_FILE: &str = "SHOAL_IDENTITY_TRUST_BUNDLE_FILE";
    pub const TLS_MIN_VERSION: &str = "SHOAL_TLS_MIN_VERSION";
    pub const INBOUND_TLS_MODE: &str = "SHOAL_INBOUND_TLS_MODE";
    pub const CONTROL_PLANE_TRUST_ANCHORS_FILE: &str = "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE";
    pub const CONTROL_PLANE_IDENTITY: &str = "SHOAL_CONTROL_PLANE_IDENTITY";
    pub const TRACING_OTLP_ENDPOINT: &str = "SHOAL_TRACING_OTLP_ENDPOINT";
    pub const TRACING_SAMPLING_RATIO: &str = "SHOAL_TRACING_SAMPLING_RATIO";
    pub const TRACING_BATCH_SIZE: &str = "SHOAL_TRACING_BATCH_SIZE";
    pub const TRACING_FLUSH_INTERVAL: &str = "SHOAL_TRACING_FLUSH_INTERVAL";
    pub const TRACING_MAX_QUEUE: &str = "SHOAL_TRACING_MAX_QUEUE";
    pub const TRACING_EXPORT_TIMEOUT: &str = "SHOAL_TRACING_EXPORT_TIMEOUT";
    pub const TRACING_RESOURCE_ATTRIBUTES: &str = "SHOAL_TRACING_RESOURCE_ATTRIBUTES";

    /// Every setting the proxy reads (an unknown `SHOAL_` key in the config file is an error).
    pub const ALL: &[&str] = &[
        OUTBOUND_ADDR,
        OUTBOUND_MODE,
        OUTBOUND_TARGET,
        INBOUND_ADDR,
        INBOUND_MODE,
        INBOUND_APP_ADDR,
        ADMIN_ADDR,
        MAX_CONNECTIONS,
        WORKER_THREADS,
        DETECT_TIMEOUT,
        SERVER_FIRST_PORTS,
        MAX_HEADER_BYTES,
        MAX_HEADERS,
        HEADER_READ_TIMEOUT,
        IDLE_TIMEOUT,
        H2_MAX_CONCURRENT_STREAMS,
        CONNECT_TIMEOUT,
        RESPONSE_TIMEOUT,
        UPSTREAM_IDLE_TIMEOUT,
        MIRROR_MAX_IN_FLIGHT,
        STATE_FILE,
        SERVICE_NAME,
        LOG,
        LOG_FORMAT,
        ACCESS_LOG,
        SHUTDOWN_GRACE,
        DISCOVERY_ADDR,
        DISCOVERY_TIMEOUT,
        PROXY_ID,
        NAMESPACE,
        SERVICE_ACCOUNT,
        IDENTITY_ADDR,
        IDENTITY_TOKEN,
        IDENTITY_TOKEN_FILE,
        IDENTITY_TOKEN_KIND,
        IDENTITY_CERT_FILE,
        IDENTITY_KEY_FILE,
        IDENTITY_TRUST_BUNDLE_FILE,
        TLS_MIN_VERSION,
        INBOUND_TLS_MODE,
        CONTROL_PLANE_TRUST_ANCHORS_FILE,
        CONTROL_PLANE_IDENTITY,
        TRACING_OTLP_ENDPOINT,
        TRACING_SAMPLING_RATIO,
        TRACING_BATCH_SIZE,
        TRACING_FLUSH_INTERVAL,
        TRACING_MAX_QUEUE,
        TRACING_EXPORT_TIMEOUT,
        TRACING_RESOURCE_ATTRIBUTES,
    ];
}

/// Where raw setting strings come from: the process environment, a file, or a map in tests.
#[derive(Debug, Default, Clone)]
pub struct Source {
    values: HashMap<String, String>,
    /// For error messages: where each value came from ("env" or the file path).
    origin: HashMap<String, String>,
}

impl Source {
    /// Settings from a map of `SHOAL_*` names to values (tests, embedding).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        map: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut s = Self::default();
        for (k, v) in map {
            s.set(k.into(), v.into(), "env");
        }
        s
    }

    /// Settings from the process environment, layered over the file named by `SHOAL_CONFIG`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SHOAL_"))
            .collect();
        let mut source = match vars.get(env::CONFIG) {
            Some(path) => Self::from_yaml_file(path.as_ref())?,
            None => Self::default(),
        };
        for (k, v) in vars {
            source.set(k, v, "env");
        }
        Ok(source)
    }

    /// Settings from a YAML mapping of lower-case names without the prefix (`outbound_addr: ...`).
    pub fn from_yaml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file_err = |problem: String| ConfigError::File {
            path: origin.to_string(),
            problem,
        };
        let map: HashMap<String, serde_yaml_ng::Value> =
            serde_yaml_ng::from_str(text).map_err(|e| file_err(e.to_string()))?;
        let mut source = Self::default();
        for (key, value) in map {
            let name = format!("SHOAL_{}", key.to_ascii_uppercase());
            if !env::ALL.contains(&name.as_str()) {
                return Err(file_err(format!(
                    "unknown setting `{key}` (see docs/configuration.md for the list)"
                )));
            }
            let text = match value {
                serde_yaml_ng::Value::String(s) => s,
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::Bool(b) => b.to_string(),
                serde_yaml_ng::Value::Sequence(items) => items
                    .iter()
                    .map(|v| match v {
                        serde_yaml_ng::Value::String(s) => Ok(s.clone()),
                        serde_yaml_ng::Value::Number(n) => Ok(n.to_string()),
                        _ => Err(file_err(format!("`{key}`: list items must be scalars"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
                serde_yaml_ng::Value::Null => continue,
                _ => return Err(file_err(format!("`{key}` must be a scalar or a list"))),
            };
            source.set(name, text, origin);
        }
        Ok(source)
    }

    fn set(&mut self, key: String, value: String, origin: &str) {
        self.origin.insert(key.clone(), origin.to_string());
        self.values.insert(key, value);
    }
}

/// How a listener learns where a connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The original destination from SO_ORIGINAL_DST (iptables REDIRECT).
    Transparent,
    /// No iptables: a configured target, or the HTTP authority.
    Explicit,
    /// No listener.
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The outbound listener (the app's outgoing connections).
#[derive(Debug, Clone, Serialize)]
pub struct OutboundConfig {
    /// Bind address.
    pub addr: SocketAddr,
    /// Transparent, explicit or off.
    pub mode: Mode,
    /// Explicit mode: where non-HTTP traffic and unknown authorities go.
    pub target: Option<String>,
}

/// The inbound listener (connections to the app).
#[derive(Debug, Clone, Serialize)]
pub struct InboundConfig {
    /// Bind address.
    pub addr: SocketAddr,
    /// Transparent, explicit or off.
    pub mode: Mode,
    /// Explicit mode: the app's address.
    pub app_addr: SocketAddr,
}

/// HTTP limits and timeouts, shared by both directions.
#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    /// Largest message head in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one message.
    pub max_headers: usize,
    /// Time to receive a complete request head; also the HTTP/1 keep-alive idle limit.
    #[serde(with = "parse::duration_serde")]
    pub header_read_timeout: Duration,
    /// HTTP/2 and opaque connections idle for this long are closed.
    #[serde(with = "parse::duration_serde")]
    pub idle_timeout: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub h2_max_concurrent_streams: u32,
    /// Upstream TCP connect timeout.
    #[serde(with = "parse::duration_serde")]
    pub connect_timeout: Duration,
    /// Time to the upstream response head; `None` disables.
    #[serde(with = "parse::opt_duration_serde")]
    pub response_timeout: Option<Duration>,
    /// Idle pooled upstream connections are closed after this.
    #[serde(with = "parse::duration_serde")]
    pub upstream_idle_timeout: Duration,
    /// Mirror copies in flight at once; a copy over it is skipped (never queued).
    pub mirror_max_in_flight: usize,
}

/// The whole proxy configuration, typed and validated.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Outbound listener.
    pub outbound: OutboundConfig,
    /// Inbound listener.
    pub inbound: InboundConfig,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Connections per listener.
    pub max_connections: usize,
    /// Runtime threads (1 = current-thread runtime).
    pub worker_threads: usize,
    /// Wait for the client's first bytes at most this long.
    #[serde(with = "parse::duration_serde")]
    pub detect_timeout: Duration,
    /// Destination ports that skip detection (server speaks first).
    pub server_first_ports: Vec<u16>,
    /// HTTP limits and timeouts.
    pub http: HttpConfig,
    /// Static state file.
    pub state_file: Option<PathBuf>,
    /// The service this proxy sits beside.
    pub service_name: String,
    /// The zone (failure domain) this proxy runs in: balancing prefers endpoints of the same zone.
    pub zone: Option<String>,
    /// Initial log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// One log line per request.
    pub access_log: bool,
    /// Graceful shutdown limit.
    #[serde(with = "parse::duration_serde")]
    pub shutdown_grace: Duration,
    /// The control-plane client; `None` without `SHOAL_DISCOVERY_ADDR`.
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    /// The workload certificate's source (`None`: no mesh identity, plain text only).
    pub identity: Option<crate::identity::IdentityConfig>,
    /// How the control plane is verified (`None` without a TLS control-plane address or anchors file).
    pub control_plane_tls: Option<crate::control_plane::TlsSettings>,
    /// The inbound mTLS mode for ports the state sets none for.
    pub inbound_tls_mode: crate::tls::TlsMode,
    /// The workload's namespace (`SHOAL_NAMESPACE`).
    pub namespace: String,
    /// The workload's service account (`SHOAL_SERVICE_ACCOUNT`).
    pub service_account: String,
    /// Span export over OTLP; `None` without `SHOAL_TRACING_OTLP_ENDPOINT`.
    pub tracing: Option<TracingConfig>,
}

/// Serialises a duration in humantime form (for `/config`).
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    parse::duration_serde::serialize(d, s)
}

/// The default destination ports whose servers speak first (SMTP, MySQL, PostgreSQL, Redis,
/// memcached, MongoDB): waiting for a client hello there would stall the connection.
pub const DEFAULT_SERVER_FIRST_PORTS: &str = "25,587,3306,5432,6379,11211,27017";

impl Config {
    /// Reads the process environment (and `SHOAL_CONFIG`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Source::from_env()?)
    }

    /// Builds the typed configuration from raw settings; the first invalid one is reported.
    pub fn from_source(source: &Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let outbound = OutboundConfig {
            addr: r.addr(env::OUTBOUND_ADDR, "127.0.0.1:15001")?,
            mode: r.mode(env::OUTBOUND_MODE, Mode::Transparent)?,
            target: r.opt_string(env::OUTBOUND_TARGET),
        };
        if let Some(t) = &outbound.target {
            parse::validate_host_port(env::OUTBOUND_TARGET, t, source)?;
        }
        let inbound = InboundConfig {
            addr: r.addr(env::INBOUND_ADDR, "0.0.0.0:15006")?,
            mode: r.mode(env::INBOUND_MODE, Mode::Transparent)?,
            app_addr: r.addr(env::INBOUND_APP_ADDR, "127.0.0.1:8080")?,
        };
        let http = HttpConfig {
            max_header_bytes: r.int_in(env::MAX_HEADER_BYTES, 61_440, 8_192..=1 << 20)?,
            max_headers: r.int_in(env::MAX_HEADERS, 100, 1..=1_000)?,
            header_read_timeout: r.duration_min(env::HEADER_READ_TIMEOUT, "10s", 1)?,
            idle_timeout: r.duration_min(env::IDLE_TIMEOUT, "300s", 1)?,
            h2_max_concurrent_streams: r.int_in(
                env::H2_MAX_CONCURRENT_STREAMS,
                100,
                1..=1_000_000,
            )? as u32,
            connect_timeout: r.duration_min(env::CONNECT_TIMEOUT, "1s", 1)?,
            response_timeout: r.opt_duration(env::RESPONSE_TIMEOUT, "30s")?,
            upstream_idle_timeout: r.duration_min(env::UPSTREAM_IDLE_TIMEOUT, "90s", 1)?,
            mirror_max_in_flight: r.int_in(env::MIRROR_MAX_IN_FLIGHT, 100, 1..=100_000)?,
        };
        let log_format = match r.string(env::LOG_FORMAT, "plain").as_str() {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => return Err(r.invalid(env::LOG_FORMAT, other, "`plain` or `json`")),
        };
        let mut config = Config {
            outbound,
            inbound,
            admin_addr: r.addr(env::ADMIN_ADDR, "0.0.0.0:15021")?,
            max_connections: r.int_in(env::MAX_CONNECTIONS, 20_000, 1..=10_000_000)?,
            worker_threads: r.int_in(env::WORKER_THREADS, 1, 1..=256)?,
            detect_timeout: r.duration_min(env::DETECT_TIMEOUT, "500ms", 1)?,
            server_first_ports: {
                let raw = r.string(env::SERVER_FIRST_PORTS, DEFAULT_SERVER_FIRST_PORTS);
                parse_ports(&raw)
                    .map_err(|expected| r.invalid(env::SERVER_FIRST_PORTS, &raw, &expected))?
            },
            http,
            state_file: r.opt_string(env::STATE_FILE).map(PathBuf::from),
            service_name: r.string(env::SERVICE_NAME, "unknown"),
            zone: r.opt_string(env::ZONE).filter(|z| !z.is_empty()),
            log: r.string(env::LOG, "info"),
            log_format,
            access_log: r.bool(env::ACCESS_LOG, false)?,
            shutdown_grace: r.duration_min(env::SHUTDOWN_GRACE, "25s", 0)?,
            discovery: None,
            identity: None,
            control_plane_tls: None,
            inbound_tls_mode: identity::inbound_tls_mode(&r)?,
            namespace: String::new(),
            service_account: String::new(),
            tracing: tracing::tracing(&r)?,
        };
        let (namespace, service_account) = workload(&r)?;
        config.discovery = discovery(&r, &namespace, &service_account)?;
        config.identity = identity::identity(
            &r,
            config.discovery.as_ref().map(|d| d.addr.as_str()),
            &namespace,
            &service_account,
        )?;
        let mut addrs = Vec::new();
        if let Some(d) = &config.discovery {
            addrs.push((env::DISCOVERY_ADDR, d.addr.as_str()));
        }
        if let Some(crate::identity::IdentityConfig {
            source: crate::identity::Source::ControlPlane { addr, .. },
            ..
        }) = &config.identity
        {
            addrs.push((env::IDENTITY_ADDR, addr.as_str()));
        }
        config.control_plane_tls = control_plane::tls(&r, &addrs)?;
        config.namespace = namespace;
        config.service_account = service_account;
        config.check_conflicts(&r)?;
        Ok(config)
    }

    fn check_conflicts(&self, r: &Reader<'_>) -> Result<(), ConfigError> {
        if let (Some(d), Some(_)) = (&self.discovery, &self.state_file) {
            return Err(r.invalid(
                env::STATE_FILE,
                &self
                    .state_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                &format!(
                    "no state file when {} ({}) is set: state comes from one source",
                    env::DISCOVERY_ADDR,
                    d.addr
                ),
            ));
        }
        let mut bound = vec![(env::ADMIN_ADDR, self.admin_addr)];
        if self.outbound.mode != Mode::Off {
            bound.push((env::OUTBOUND_ADDR, self.outbound.addr));
        }
        if self.inbound.mode != Mode::Off {
            bound.push((env::INBOUND_ADDR, self.inbound.addr));
        }
        for (i, (name, addr)) in bound.iter().enumerate() {
            for (other, other_addr) in &bound[i + 1..] {
                if addr == other_addr && addr.port() != 0 {
                    return Err(r.invalid(
                        name,
                        &addr.to_string(),
                        &format!("an address different from {other}"),
                    ));
                }
            }
        }
        if self.inbound.mode == Mode::Explicit && self.inbound.app_addr == self.inbound.addr {
            return Err(r.invalid(
                env::INBOUND_APP_ADDR,
                &self.inbound.app_addr.to_string(),
                "the app's address, not the proxy's own inbound address",
            ));
        }
        Ok(())
    }
}

/// A control-plane address as a URL (see [`control_plane::url`]).
fn control_plane_url(r: &Reader<'_>, setting: &str, raw: &str) -> Result<String, ConfigError> {
    control_plane::url(r, setting, raw)
}

/// The workload's namespace and service account (its mesh identity).
fn workload(r: &Reader<'_>) -> Result<(String, String), ConfigError> {
    let namespace = r.string(env::NAMESPACE, "default");
    let service_account = r.string(env::SERVICE_ACCOUNT, "default");
    for (name, value) in [
        (env::NAMESPACE, &namespace),
        (env::SERVICE_ACCOUNT, &service_account),
    ] {
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(r.invalid(name, value, "a DNS label (a-z, 0-9, '-')"));
        }
    }
    Ok((namespace, service_account))
}

fn discovery(
    r: &Reader<'_>,
    namespace: &str,
    service_account: &str,
) -> Result<Option<crate::discovery::DiscoveryConfig>, ConfigError> {
    let Some(raw) = r.opt_string(env::DISCOVERY_ADDR) else {
        return Ok(None);
    };
    let addr = control_plane_url(r, env::DISCOVERY_ADDR, &raw)?;
    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "proxy".into());
    Ok(Some(crate::discovery::DiscoveryConfig {
        addr,
        proxy_id: r.string(
            env::PROXY_ID,
            &format!("{}.{}", hostname.trim(), std::process::id()),
        ),
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        service_name: r.opt_string(env::SERVICE_NAME).unwrap_or_default(),
        lookup_timeout: r.duration_min(env::DISCOVERY_TIMEOUT, "1s", 1)?,
    }))
}

#[cfg(test)]
mod tests;
