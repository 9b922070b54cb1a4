//! Control-plane configuration: every setting, its default, and how it is read.
//!
//! As in the proxy, reading is split in two: [`Settings`] gathers the raw `SHOAL_CP_*` strings (from the
//! process environment, or a map in tests), and [`Config::from_settings`] turns them into typed values,
//! failing with an error that names the setting, the value and what was expected. docs/control-plane.md
//! documents every setting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::spiffe::TrustDomain;
use crate::sources::kubernetes::{
    DEFAULT_AUDIENCE, IN_CLUSTER_CA_FILE, IN_CLUSTER_TOKEN_FILE, KubernetesConfig,
};

/// Shortest and longest workload certificate lifetimes accepted in [`env::CERT_TTL`]. Below a few minutes every
/// proxy renews every few seconds (a `TokenReview` each in Kubernetes mode) and clocks must agree closely: the
/// short end is for tests and demos of renewal, with real processes.
pub const CERT_TTL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(30 * 24 * 3600));

/// The default of [`env::CA_PROPAGATION_TIMEOUT`]: proxies ACK a pushed bundle within milliseconds, so this
/// only bounds the wait for one that is connected but not answering.
pub const DEFAULT_CA_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`env::CA_STATE_TIMEOUT`]: long enough for an API server restart, short enough that a control
/// plane that cannot reach its CA says so instead of waiting forever.
pub const DEFAULT_CA_STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`env::ADMIN_MAX_REQUEST_BYTES`]: gRPC's usual 4 MiB.
pub const DEFAULT_ADMIN_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Smallest and largest values of [`env::ADMIN_MAX_REQUEST_BYTES`]. The largest leaves room, within what a
/// proxy accepts in one discovery message (`shoal-proxy`'s 16 MiB), for the response that carries a resource of
/// that size alone: a resource the control plane stores can always be pushed.
pub const ADMIN_MAX_REQUEST_BYTES_BOUNDS: (usize, usize) = (64 * 1024, 15 * 1024 * 1024);

/// Names of every environment variable, in one place.
pub mod env {
    /// gRPC Admin API listener (operators, `shoalctl`).
    pub const ADMIN_ADDR: &str = "SHOAL_CP_ADMIN_ADDR";
    /// gRPC Discovery listener (proxies).
    pub const DISCOVERY_ADDR: &str = "SHOAL_CP_DISCOVERY_ADDR";
    /// HTTP listener for `/metrics`, `/ready`, `/live`.
    pub const METRICS_ADDR: &str = "SHOAL_CP_METRICS_ADDR";
    /// Directory of the store's data file.
    pub const DATA_DIR: &str = "SHOAL_CP_DATA_DIR";
    /// Log filter (shared with the proxy's name).
    pub const LOG: &str = "SHOAL_LOG";
    /// Log format, `plain` or `json` (shared with the proxy's name).
    pub const LOG_FORMAT: &str = "SHOAL_LOG_FORMAT";
    /// Endpoints file: static endpoints and DNS names (endpoint sources); unset means none.
    pub const ENDPOINTS_FILE: &str = "SHOAL_CP_ENDPOINTS_FILE";
    /// Trust domain of the SPIFFE ids the CA issues.
    pub const TRUST_DOMAIN: &str = "SHOAL_CP_TRUST_DOMAIN";
    /// Lifetime of workload certificates.
    pub const CERT_TTL: &str = "SHOAL_CP_CERT_TTL";
    /// The operator's root certificate (PEM); with [`CA_KEY_FILE`], the CA runs an intermediate under it.
    pub const CA_CERT_FILE: &str = "SHOAL_CP_CA_CERT_FILE";
    /// The private key (PKCS#8 PEM, mode 0600) of [`CA_CERT_FILE`].
    pub const CA_KEY_FILE: &str = "SHOAL_CP_CA_KEY_FILE";
    /// Shortest time between two change-driven discovery pushes to one proxy.
    pub const PUSH_INTERVAL: &str = "SHOAL_CP_PUSH_INTERVAL";
    /// The longest a rotated-in CA root stays pending (trusted, not signing) while connected proxies have
    /// not acknowledged it.
    pub const CA_PROPAGATION_TIMEOUT: &str = "SHOAL_CP_CA_PROPAGATION_TIMEOUT";
    /// Kubernetes mode: how long start-up keeps trying to read (or create) the CA's Secret before it gives up.
    pub const CA_STATE_TIMEOUT: &str = "SHOAL_CP_CA_STATE_TIMEOUT";
    /// The control plane's namespace: its own SPIFFE id is `spiffe://<td>/ns/<this>/sa/shoal-control-plane`.
    pub const NAMESPACE: &str = "SHOAL_CP_NAMESPACE";
    /// `true` also serves plaintext h2c on the discovery listener (benchmarks, trusted networks).
    pub const DISCOVERY_PLAINTEXT: &str = "SHOAL_CP_DISCOVERY_PLAINTEXT";
    /// HTTPS listener of the sidecar injector's admission webhook (`/inject`); only with the two files below.
    pub const WEBHOOK_ADDR: &str = "SHOAL_CP_WEBHOOK_ADDR";
    /// The webhook's serving certificate chain (PEM); with [`WEBHOOK_KEY_FILE`], enables the webhook.
    pub const WEBHOOK_CERT_FILE: &str = "SHOAL_CP_WEBHOOK_CERT_FILE";
    /// The private key (PEM) of [`WEBHOOK_CERT_FILE`].
    pub const WEBHOOK_KEY_FILE: &str = "SHOAL_CP_WEBHOOK_KEY_FILE";
    /// The injector's configuration (YAML: proxy image, uid, ports, resources...); unset means the defaults.
    pub const INJECTOR_CONFIG_FILE: &str = "SHOAL_CP_INJECTOR_CONFIG_FILE";
    /// How long a proxy whose discovery stream ended stays in `Status` (as disconnected).
    pub const DISCONNECTED_PROXY_GRACE: &str = "SHOAL_CP_DISCONNECTED_PROXY_GRACE";
    /// Largest Admin API request accepted, in bytes (an `Apply` carries one resource).
    pub const ADMIN_MAX_REQUEST_BYTES: &str = "SHOAL_CP_ADMIN_MAX_REQUEST_BYTES";
    /// `true` runs the Kubernetes endpoint source: Services, EndpointSlices and Pods from the API server.
    pub const KUBERNETES: &str = "SHOAL_CP_KUBERNETES";
    /// The API server's URL; default from `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` (in a pod).
    pub const KUBERNETES_API_URL: &str = "SHOAL_CP_KUBERNETES_API_URL";
    /// The bearer token file; default the pod's service account token.
    pub const KUBERNETES_TOKEN_FILE: &str = "SHOAL_CP_KUBERNETES_TOKEN_FILE";
    /// The API server's CA bundle (PEM); default the pod's service account `ca.crt`. Only for `https://`.
    pub const KUBERNETES_CA_FILE: &str = "SHOAL_CP_KUBERNETES_CA_FILE";
    /// Audiences a proxy's projected service-account token must be for (comma-separated); default `shoal`.
    pub const KUBERNETES_AUDIENCES: &str = "SHOAL_CP_KUBERNETES_AUDIENCES";
    /// Set by Kubernetes in every pod: the API server's Service address (not a Shoal setting).
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    /// Set by Kubernetes in every pod: the API server's Service port (not a Shoal setting).
    pub const KUBERNETES_SERVICE_PORT: &str = "KUBERNETES_SERVICE_PORT";

    /// The prefix of the control plane's own settings; an unknown name with it is an error (a typo).
    pub const PREFIX: &str = "SHOAL_CP_";

    /// Every setting the control plane reads.
    pub const ALL: &[&str] = &[
        ADMIN_ADDR,
        DISCOVERY_ADDR,
        METRICS_ADDR,
        DATA_DIR,
        LOG,
        LOG_FORMAT,
        ENDPOINTS_FILE,
        TRUST_DOMAIN,
        CERT_TTL,
        CA_CERT_FILE,
        CA_KEY_FILE,
        PUSH_INTERVAL,
        CA_PROPAGATION_TIMEOUT,
        CA_STATE_TIMEOUT,
        NAMESPACE,
        DISCOVERY_PLAINTEXT,
        WEBHOOK_ADDR,
        WEBHOOK_CERT_FILE,
        WEBHOOK_KEY_FILE,
        INJECTOR_CONFIG_FILE,
        DISCONNECTED_PROXY_GRACE,
        ADMIN_MAX_REQUEST_BYTES,
        KUBERNETES,
        KUBERNETES_API_URL,
        KUBERNETES_TOKEN_FILE,
        KUBERNETES_CA_FILE,
        KUBERNETES_AUDIENCES,
    ];
}

/// Name of the store's data file inside [`Config::data_dir`].
pub const STORE_FILE: &str = "store.redb";

/// A setting that cannot be used; the message names it and says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value did not parse.
    #[error("invalid configuration: {setting}={value:?}: expected {expected}")]
    Invalid {
        /// The variable's name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A `SHOAL_CP_` variable the control plane does not know, most likely a typo.
    #[error("unknown setting {setting}: the control plane reads {}", env::ALL.join(", "))]
    Unknown {
        /// The variable's name.
        setting: String,
    },
}

/// Raw settings: variable names to values.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    values: HashMap<String, String>,
}

impl Settings {
    /// The `SHOAL_` variables of the process environment, and the two Kubernetes sets in every pod to name
    /// the API server (the default of [`env::KUBERNETES_API_URL`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(std::env::vars().filter(|(k, _)| {
            k.starts_with("SHOAL_")
                || k == env::KUBERNETES_SERVICE_HOST
                || k == env::KUBERNETES_SERVICE_PORT
        }))
    }

    /// Settings from a map of variable names to values (tests, embedding). Names without the `SHOAL_CP_`
    /// prefix that the control plane does not read are ignored (they belong to other programs).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        map: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut values = HashMap::new();
        for (key, value) in map {
            let key = key.into();
            if key.starts_with(env::PREFIX) && !env::ALL.contains(&key.as_str()) {
                return Err(ConfigError::Unknown { setting: key });
            }
            values.insert(key, value.into());
        }
        Ok(Self { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The control plane's configuration, typed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admin API (gRPC). Default `127.0.0.1:15011`: it changes every proxy's behaviour, so only local
    /// operators reach it unless configured otherwise.
    pub admin_addr: SocketAddr,
    /// Discovery (gRPC, proxies connect here). Default `0.0.0.0:15010`.
    pub discovery_addr: SocketAddr,
    /// `/metrics`, `/ready`, `/live` (HTTP). Default `0.0.0.0:15014`.
    pub metrics_addr: SocketAddr,
    /// Directory of the store's data file; created if missing. Default `./shoal-data`.
    pub data_dir: PathBuf,
    /// Log filter, for example `info` or `info,shoal_control_plane=debug`. Default `info`.
    pub log: String,
    /// Log format. Default `plain`.
    pub log_format: LogFormat,
    /// The endpoints file of the `file` and `dns` endpoint sources (see `crate::sources`); `None` (the
    /// default) runs no endpoint source.
    pub endpoints_file: Option<PathBuf>,
    /// Trust domain of issued SPIFFE ids. Default `cluster.local`.
    pub trust_domain: TrustDomain,
    /// Lifetime of workload certificates, 5 minutes to 30 days. Default 24 hours.
    pub cert_ttl: Duration,
    /// The operator's root certificate and key files; `None` (the default): a self-generated root.
    pub ca_root: Option<(PathBuf, PathBuf)>,
    /// The longest a CA rotation's new root stays pending (in every trust bundle, not signing yet) while
    /// proxies connected to discovery have not acknowledged it, 1 s to 24 h; it activates as soon as they all
    /// have. Default 60 s.
    pub ca_propagation_timeout: Duration,
    /// Kubernetes mode: how long start-up keeps trying to read or create the CA's Secret (`shoal-ca-state`)
    /// when the API server does not answer, 1 s to 10 min. Default 60 s.
    pub ca_state_timeout: Duration,
    /// Shortest time between two change-driven discovery pushes to one proxy, 0 to 10 s. A change
    /// after a quieter period is pushed at once; changes within the interval are coalesced into
    /// the next push. Default: `crate::discovery::hub::DEFAULT_PUSH_INTERVAL`.
    pub push_interval: Duration,
    /// The control plane's namespace (a DNS label), in its own SPIFFE id. Default `shoal-system`.
    pub namespace: String,
    /// Whether the discovery listener also serves plaintext h2c. Default `false`: TLS only.
    pub discovery_plaintext: bool,
    /// The sidecar injector's webhook; `None` (the default: no certificate files) serves none.
    pub webhook: Option<WebhookConfig>,
    /// How long a proxy whose discovery stream ended stays in `Status`, marked disconnected with when it
    /// was last seen, 0 (removed at once) to 24 h. Default
    /// [`DEFAULT_DISCONNECTED_GRACE`](crate::discovery::registry::DEFAULT_DISCONNECTED_GRACE), 5 minutes.
    pub disconnected_proxy_grace: Duration,
    /// Largest Admin API request accepted, in bytes, within [`ADMIN_MAX_REQUEST_BYTES_BOUNDS`]. Default
    /// [`DEFAULT_ADMIN_MAX_REQUEST_BYTES`].
    pub admin_max_request_bytes: usize,
    /// The Kubernetes endpoint source; `None` (the default, `SHOAL_CP_KUBERNETES=false`) runs none.
    pub kubernetes: Option<KubernetesConfig>,
}

/// The sidecar injector's admission webhook (docs/kubernetes.md, "Sidecar injection").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// HTTPS listener. Default `0.0.0.0:15017`.
    pub addr: SocketAddr,
    /// Serving certificate chain (PEM), re-read when it changes.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// The injector's configuration file; `None`: the built-in defaults.
    pub injector_config_file: Option<PathBuf>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_env()?)
    }

    /// Builds the typed configuration; the first invalid setting is reported.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let addr = |name: &'static str, default: &str| {
            let raw = settings.get(name).unwrap_or(default);
            raw.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
                setting: name,
                value: raw.to_owned(),
                expected: "an IP:PORT socket address such as 127.0.0.1:15011".to_owned(),
            })
        };
        let log_format = match settings.get(env::LOG_FORMAT).unwrap_or("plain") {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    setting: env::LOG_FORMAT,
                    value: other.to_owned(),
                    expected: "`plain` or `json`".to_owned(),
                });
            }
        };
        let trust_domain = match settings.get(env::TRUST_DOMAIN) {
            None => TrustDomain::default(),
            Some(raw) => TrustDomain::parse(raw).map_err(|expected| ConfigError::Invalid {
                setting: env::TRUST_DOMAIN,
                value: raw.to_owned(),
                expected,
            })?,
        };
        let cert_ttl = match settings.get(env::CERT_TTL) {
            None => Duration::from_secs(24 * 3600),
            Some(raw) => {
                let (min, max) = CERT_TTL_BOUNDS;
                let invalid = || ConfigError::Invalid {
                    setting: env::CERT_TTL,
                    value: raw.to_owned(),
                    expected: "a duration from 10s to 30d, such as 24h".to_owned(),
                };
                let ttl = humantime::parse_duration(raw).map_err(|_| invalid())?;
                if ttl < min || ttl > max {
                    return Err(invalid());
                }
                ttl
            }
        };
        let ca_root = match (
            settings.get(env::CA_CERT_FILE),
            settings.get(env::CA_KEY_FILE),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (Some(cert), None) => {
                return Err(ConfigError::Invalid {
                    setting: env::CA_KEY_FILE,
                    value: String::new(),
                    expected: format!(
                        "the root's private key file, required with {}={cert}",
                        env::CA_CERT_FILE
                    ),
                });
            }
            (None, Some(key)) => {
                return Err(ConfigError::Invalid {
                    setting: env::CA_CERT_FILE,
                    value: String::new(),
                    expected: format!(
                        "the root certificate file, required with {}={key}",
                        env::CA_KEY_FILE
                    ),
                });
            }
        };
        let ca_propagation_timeout = match settings.get(env::CA_PROPAGATION_TIMEOUT) {
            None => DEFAULT_CA_PROPAGATION_TIMEOUT,
            Some(raw) => {
                let (min, max) = crate::identity::ca::PROPAGATION_TIMEOUT_BOUNDS;
                let invalid = || ConfigError::Invalid {
                    setting: env::CA_PROPAGATION_TIMEOUT,
                    value: raw.to_owned(),
                    expected: "a duration from 1s to 24h, such as 60s".to_owned(),
                };
                let timeout = humantime::parse_duration(raw).map_err(|_| invalid())?;
                if timeout < min || timeout > max {
                    return Err(invalid());
                }
                timeout
            }
        };
        let push_interval = match settings.get(env::PUSH_INTERVAL) {
            None => crate::discovery::hub::DEFAULT_PUSH_INTERVAL,
            Some(raw) => {
                let invalid = || ConfigError::Invalid {
                    setting: env::PUSH_INTERVAL,
                    value: raw.to_owned(),
                    expected: "a duration from 0ms to 10s, such as 50ms".to_owned(),
                };
                let interval = humantime::parse_duration(raw).map_err(|_| invalid())?;
                if interval > Duration::from_secs(10) {
                    return Err(invalid());
                }
                interval
            }
        };
        let disconnected_proxy_grace = match settings.get(env::DISCONNECTED_PROXY_GRACE) {
            None => crate::discovery::registry::DEFAULT_DISCONNECTED_GRACE,
            Some(raw) => {
                let invalid = || ConfigError::Invalid {
                    setting: env::DISCONNECTED_PROXY_GRACE,
                    value: raw.to_owned(),
                    expected: "a duration from 0s to 24h, such as 5m".to_owned(),
                };
                let grace = humantime::parse_duration(raw).map_err(|_| invalid())?;
                if grace > Duration::from_secs(24 * 3600) {
                    return Err(invalid());
                }
                grace
            }
        };
        let namespace = settings.get(env::NAMESPACE).unwrap_or("shoal-system");
        crate::model::dns_label(namespace).map_err(|reason| ConfigError::Invalid {
            setting: env::NAMESPACE,
            value: namespace.to_owned(),
            expected: format!("a DNS label such as shoal-system ({reason})"),
        })?;
        let discovery_plaintext = match settings.get(env::DISCOVERY_PLAINTEXT) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: env::DISCOVERY_PLAINTEXT,
                    value: other.to_owned(),
                    expected: "`true` or `false`".to_owned(),
                });
            }
        };
        let webhook = webhook(settings)?;
        let kubernetes = kubernetes(settings)?;
        let admin_max_request_bytes = match settings.get(env::ADMIN_MAX_REQUEST_BYTES) {
            None => DEFAULT_ADMIN_MAX_REQUEST_BYTES,
            Some(raw) => {
                let (min, max) = ADMIN_MAX_REQUEST_BYTES_BOUNDS;
                match raw.parse::<usize>() {
                    Ok(bytes) if (min..=max).contains(&bytes) => bytes,
                    _ => {
                        return Err(ConfigError::Invalid {
                            setting: env::ADMIN_MAX_REQUEST_BYTES,
                            value: raw.to_owned(),
                            expected: format!("a number of bytes from {min} to {max}"),
                        });
                    }
                }
            }
        };
        let ca_state_timeout = match settings.get(env::CA_STATE_TIMEOUT) {
            None => DEFAULT_CA_STATE_TIMEOUT,
            Some(raw) => {
                let invalid = || ConfigError::Invalid {
                    setting: env::CA_STATE_TIMEOUT,
                    value: raw.to_owned(),
                    expected: "a duration from 1s to 10m, such as 60s".to_owned(),
                };
                let timeout = humantime::parse_duration(raw).map_err(|_| invalid())?;
                if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(600) {
                    return Err(invalid());
                }
                timeout
            }
        };
        let config = Self {
            admin_addr: addr(env::ADMIN_ADDR, "127.0.0.1:15011")?,
            discovery_addr: addr(env::DISCOVERY_ADDR, "0.0.0.0:15010")?,
            metrics_addr: addr(env::METRICS_ADDR, "0.0.0.0:15014")?,
            data_dir: PathBuf::from(settings.get(env::DATA_DIR).unwrap_or("./shoal-data")),
            log: settings.get(env::LOG).unwrap_or("info").to_owned(),
            log_format,
            endpoints_file: settings.get(env::ENDPOINTS_FILE).map(PathBuf::from),
            trust_domain,
            cert_ttl,
            ca_root,
            ca_propagation_timeout,
            ca_state_timeout,
            push_interval,
            namespace: namespace.to_owned(),
            discovery_plaintext,
            webhook,
            disconnected_proxy_grace,
            admin_max_request_bytes,
            kubernetes,
        };
        config.check_distinct()?;
        Ok(config)
    }

    /// The store's data file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }

    fn check_distinct(&self) -> Result<(), ConfigError> {
        let mut listeners = vec![
            (env::ADMIN_ADDR, self.admin_addr),
            (env::DISCOVERY_ADDR, self.discovery_addr),
            (env::METRICS_ADDR, self.metrics_addr),
        ];
        if let Some(webhook) = &self.webhook {
            listeners.push((env::WEBHOOK_ADDR, webhook.addr));
        }
        for (i, (name, addr)) in listeners.iter().enumerate() {
            for (other, other_addr) in &listeners[i + 1..] {
                // Port 0 asks the OS for a free port, so two of them never clash.
                if addr.port() != 0 && addr.port() == other_addr.port() {
                    return Err(ConfigError::Invalid {
                        setting: name,
                        value: addr.to_string(),
                        expected: format!("a port different from {other} ({other_addr})"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The Kubernetes source's settings; each is refused without `SHOAL_CP_KUBERNETES=true` (it would do nothing).
fn kubernetes(settings: &Settings) -> Result<Option<KubernetesConfig>, ConfigError> {
    let enabled = match settings.get(env::KUBERNETES) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                setting: env::KUBERNETES,
                value: other.to_owned(),
                expected: "`true` or `false`".to_owned(),
            });
        }
    };
    let own = [
        env::KUBERNETES_API_URL,
        env::KUBERNETES_TOKEN_FILE,
        env::KUBERNETES_CA_FILE,
        env::KUBERNETES_AUDIENCES,
    ];
    if !enabled {
        for setting in own {
            if let Some(value) = settings.get(setting) {
                return Err(ConfigError::Invalid {
                    setting,
                    value: value.to_owned(),
                    expected: format!(
                        "to be set only with {}=true, which turns on discovery from Kubernetes",
                        env::KUBERNETES
                    ),
                });
            }
        }
        return Ok(None);
    }
    let api_url = match settings.get(env::KUBERNETES_API_URL) {
        Some(url) => url.to_owned(),
        None => match (
            settings.get(env::KUBERNETES_SERVICE_HOST),
            settings.get(env::KUBERNETES_SERVICE_PORT),
        ) {
            // An IPv6 service address needs brackets in a URL.
            (Some(host), Some(port)) if host.contains(':') => format!("https://[{host}]:{port}"),
            (Some(host), Some(port)) => format!("https://{host}:{port}"),
            _ => {
                return Err(ConfigError::Invalid {
                    setting: env::KUBERNETES_API_URL,
                    value: String::new(),
                    expected: format!(
                        "the API server's URL, such as https://10.96.0.1:443 (outside a pod, where {} and {} are \
                         not set)",
                        env::KUBERNETES_SERVICE_HOST,
                        env::KUBERNETES_SERVICE_PORT
                    ),
                });
            }
        },
    };
    let https = if let Some(rest) = api_url.strip_prefix("https://") {
        !rest.is_empty()
    } else if api_url
        .strip_prefix("http://")
        .is_some_and(|r| !r.is_empty())
    {
        false
    } else {
        return Err(ConfigError::Invalid {
            setting: env::KUBERNETES_API_URL,
            value: api_url,
            expected: "an http:// or https:// URL, such as https://10.96.0.1:443".to_owned(),
        });
    };
    if api_url.parse::<http::Uri>().is_err() {
        return Err(ConfigError::Invalid {
            setting: env::KUBERNETES_API_URL,
            value: api_url,
            expected: "a URL, such as https://10.96.0.1:443".to_owned(),
        });
    }
    let ca_file = match (https, settings.get(env::KUBERNETES_CA_FILE)) {
        (true, file) => Some(PathBuf::from(file.unwrap_or(IN_CLUSTER_CA_FILE))),
        (false, None) => None,
        (false, Some(file)) => {
            return Err(ConfigError::Invalid {
                setting: env::KUBERNETES_CA_FILE,
                value: file.to_owned(),
                expected: format!(
                    "to be set only with an https:// {} (it is {api_url}: nothing to verify)",
                    env::KUBERNETES_API_URL
                ),
            });
        }
    };
    let audiences = audiences(settings)?;
    Ok(Some(KubernetesConfig {
        api_url,
        audiences,
        token_file: PathBuf::from(
            settings
                .get(env::KUBERNETES_TOKEN_FILE)
                .unwrap_or(IN_CLUSTER_TOKEN_FILE),
        ),
        ca_file,
    }))
}

/// `SHOAL_CP_KUBERNETES_AUDIENCES`: the audiences a proxy's token must be for, as the TokenReview asks.
fn audiences(settings: &Settings) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = settings.get(env::KUBERNETES_AUDIENCES) else {
        return Ok(vec![DEFAULT_AUDIENCE.to_owned()]);
    };
    let audiences: Vec<String> = raw.split(',').map(|a| a.trim().to_owned()).collect();
    if audiences
        .iter()
        .any(|a| a.is_empty() || a.contains(char::is_whitespace))
    {
        return Err(ConfigError::Invalid {
            setting: env::KUBERNETES_AUDIENCES,
            value: raw.to_owned(),
            expected:
                "one or more audiences separated by commas, such as `shoal` (the audience of the \
                       proxies' projected service-account tokens)"
                    .to_owned(),
        });
    }
    Ok(audiences)
}

/// The webhook is on when both files are named; its other settings without them would do nothing, so they
/// are refused rather than ignored.
fn webhook(settings: &Settings) -> Result<Option<WebhookConfig>, ConfigError> {
    let cert = settings.get(env::WEBHOOK_CERT_FILE);
    let key = settings.get(env::WEBHOOK_KEY_FILE);
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            for setting in [env::WEBHOOK_ADDR, env::INJECTOR_CONFIG_FILE] {
                if let Some(value) = settings.get(setting) {
                    return Err(ConfigError::Invalid {
                        setting,
                        value: value.to_owned(),
                        expected: format!(
                            "to be set only with {} and {}, which enable the sidecar injector's webhook",
                            env::WEBHOOK_CERT_FILE,
                            env::WEBHOOK_KEY_FILE
                        ),
                    });
                }
            }
            return Ok(None);
        }
        (Some(cert), None) => {
            return Err(ConfigError::Invalid {
                setting: env::WEBHOOK_KEY_FILE,
                value: String::new(),
                expected: format!(
                    "the webhook certificate's private key file, required with {}={cert}",
                    env::WEBHOOK_CERT_FILE
                ),
            });
        }
        (None, Some(key)) => {
            return Err(ConfigError::Invalid {
                setting: env::WEBHOOK_CERT_FILE,
                value: String::new(),
                expected: format!(
                    "the webhook's certificate file, required with {}={key}",
                    env::WEBHOOK_KEY_FILE
                ),
            });
        }
    };
    let raw = settings.get(env::WEBHOOK_ADDR).unwrap_or("0.0.0.0:15017");
    let addr = raw.parse().map_err(|_| ConfigError::Invalid {
        setting: env::WEBHOOK_ADDR,
        value: raw.to_owned(),
        expected: "an IP:PORT socket address such as 0.0.0.0:15017".to_owned(),
    })?;
    Ok(Some(WebhookConfig {
        addr,
        cert_file: PathBuf::from(cert),
        key_file: PathBuf::from(key),
        injector_config_file: settings.get(env::INJECTOR_CONFIG_FILE).map(PathBuf::from),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_settings(&Settings::from_map(pairs.iter().copied())?)
    }

    #[test]
    fn defaults_follow_the_port_table() {
        let config = config(&[]).expect("defaults are valid");
        assert_eq!(config.admin_addr.to_string(), "127.0.0.1:15011");
        assert_eq!(config.discovery_addr.to_string(), "0.0.0.0:15010");
        assert_eq!(config.metrics_addr.to_string(), "0.0.0.0:15014");
        assert_eq!(
            config.store_path(),
            PathBuf::from("./shoal-data/store.redb")
        );
        assert_eq!(config.log_format, LogFormat::Plain);
        assert_eq!(config.endpoints_file, None);
        let config = super::Config::from_settings(
            &Settings::from_map([(env::ENDPOINTS_FILE, "/etc/shoal/endpoints.yaml")]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            config.endpoints_file,
            Some(PathBuf::from("/etc/shoal/endpoints.yaml"))
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let error = config(&[(env::ADMIN_ADDR, "localhost")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SHOAL_CP_ADMIN_ADDR=\"localhost\""),
            "{error}"
        );
        let error = config(&[(env::LOG_FORMAT, "xml")]).unwrap_err().to_string();
        assert!(error.contains("SHOAL_LOG_FORMAT"), "{error}");
        let error = config(&[("SHOAL_CP_ADMIN_ADR", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown setting SHOAL_CP_ADMIN_ADR"),
            "{error}"
        );
        let clash = [
            (env::ADMIN_ADDR, "127.0.0.1:7000"),
            (env::METRICS_ADDR, "0.0.0.0:7000"),
        ];
        let error = config(&clash).unwrap_err().to_string();
        assert!(error.contains("SHOAL_CP_METRICS_ADDR"), "{error}");
        assert!(
            config(&[("SHOAL_OUTBOUND_ADDR", "x")]).is_ok(),
            "proxy settings are ignored"
        );
    }

    #[test]
    fn identity_settings_are_checked() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.trust_domain.as_str(), "cluster.local");
        assert_eq!(defaults.cert_ttl, Duration::from_secs(86400));
        assert!(defaults.ca_root.is_none());
        assert_eq!(defaults.ca_propagation_timeout, Duration::from_secs(60));
        assert_eq!(defaults.namespace, "shoal-system");
        assert!(!defaults.discovery_plaintext, "TLS only unless opted in");
        assert_eq!(defaults.disconnected_proxy_grace, Duration::from_secs(300));
        let grace = |raw| config(&[(env::DISCONNECTED_PROXY_GRACE, raw)]);
        assert_eq!(
            grace("2s").unwrap().disconnected_proxy_grace,
            Duration::from_secs(2)
        );
        assert_eq!(
            grace("0s").unwrap().disconnected_proxy_grace,
            Duration::ZERO
        );
        assert!(
            config(&[(env::DISCOVERY_PLAINTEXT, "true")])
                .unwrap()
                .discovery_plaintext
        );
        let set = config(&[
            (env::TRUST_DOMAIN, "mesh.example"),
            (env::CERT_TTL, "1h"),
            (env::CA_PROPAGATION_TIMEOUT, "5m"),
            (env::CA_STATE_TIMEOUT, "3s"),
        ])
        .unwrap();
        assert_eq!(set.ca_state_timeout, Duration::from_secs(3));
        assert_eq!(set.trust_domain.as_str(), "mesh.example");
        assert_eq!(set.cert_ttl, Duration::from_secs(3600));
        assert_eq!(set.ca_propagation_timeout, Duration::from_secs(300));
        // The shortest lifetime, for tests of renewal with real processes.
        let short = config(&[(env::CERT_TTL, "10s")]).unwrap();
        assert_eq!(short.cert_ttl, Duration::from_secs(10));
        for (setting, value) in [
            (env::CA_PROPAGATION_TIMEOUT, "0s"),
            (env::CA_PROPAGATION_TIMEOUT, "500ms"),
            (env::CA_PROPAGATION_TIMEOUT, "2d"),
            (env::CA_PROPAGATION_TIMEOUT, "later"),
            (env::CA_STATE_TIMEOUT, "0s"),
            (env::CA_STATE_TIMEOUT, "1h"),
            (env::TRUST_DOMAIN, "Mesh_Example"),
            (env::CERT_TTL, "9s"),
            (env::CERT_TTL, "90d"),
            (env::CERT_TTL, "soon"),
            (env::CA_CERT_FILE, "/etc/shoal/root.pem"),
            (env::NAMESPACE, "Shoal_System"),
            (env::DISCOVERY_PLAINTEXT, "yes"),
            (env::DISCONNECTED_PROXY_GRACE, "2d"),
            (env::DISCONNECTED_PROXY_GRACE, "a while"),
        ] {
            let error = config(&[(setting, value)]).unwrap_err().to_string();
            let named = if setting == env::CA_CERT_FILE {
                env::CA_KEY_FILE
            } else {
                setting
            };
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn kubernetes_settings_default_to_the_pods_service_account_and_are_checked() {
        assert_eq!(config(&[]).unwrap().kubernetes, None, "off by default");
        let in_pod = config(&[
            (env::KUBERNETES, "true"),
            (env::KUBERNETES_SERVICE_HOST, "10.96.0.1"),
            (env::KUBERNETES_SERVICE_PORT, "443"),
        ])
        .unwrap()
        .kubernetes
        .unwrap();
        assert_eq!(
            in_pod,
            KubernetesConfig {
                api_url: "https://10.96.0.1:443".to_owned(),
                token_file: PathBuf::from(IN_CLUSTER_TOKEN_FILE),
                ca_file: Some(PathBuf::from(IN_CLUSTER_CA_FILE)),
                audiences: vec!["shoal".to_owned()],
            }
        );
        let v6 = config(&[
            (env::KUBERNETES, "true"),
            (env::KUBERNETES_SERVICE_HOST, "fd00::1"),
            (env::KUBERNETES_SERVICE_PORT, "443"),
        ]);
        assert_eq!(
            v6.unwrap().kubernetes.unwrap().api_url,
            "https://[fd00::1]:443"
        );
        // Plain HTTP (tests, `kubectl proxy`): no CA to verify with.
        let plain = config(&[
            (env::KUBERNETES, "true"),
            (env::KUBERNETES_API_URL, "http://127.0.0.1:8001"),
            (env::KUBERNETES_TOKEN_FILE, "/tmp/token"),
        ])
        .unwrap()
        .kubernetes
        .unwrap();
        assert_eq!(plain.ca_file, None);
        assert_eq!(plain.token_file, PathBuf::from("/tmp/token"));

        let refused = |pairs: &[(&str, &str)], named: &str, says: &str| {
            let error = config(pairs).unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains(says),
                "{pairs:?}: {error}"
            );
        };
        refused(
            &[(env::KUBERNETES, "yes")],
            env::KUBERNETES,
            "`true` or `false`",
        );
        // Without SHOAL_CP_KUBERNETES=true they would do nothing.
        for setting in [
            env::KUBERNETES_API_URL,
            env::KUBERNETES_TOKEN_FILE,
            env::KUBERNETES_CA_FILE,
            env::KUBERNETES_AUDIENCES,
        ] {
            refused(&[(setting, "x")], setting, "SHOAL_CP_KUBERNETES=true");
        }
        // Outside a pod there is no default API server.
        refused(
            &[(env::KUBERNETES, "true")],
            env::KUBERNETES_API_URL,
            "the API server's URL",
        );
        refused(
            &[
                (env::KUBERNETES, "true"),
                (env::KUBERNETES_API_URL, "10.96.0.1:443"),
            ],
            env::KUBERNETES_API_URL,
            "http:// or https://",
        );
        refused(
            &[
                (env::KUBERNETES, "true"),
                (env::KUBERNETES_API_URL, "http://127.0.0.1:8001"),
                (env::KUBERNETES_CA_FILE, "/ca.crt"),
            ],
            env::KUBERNETES_CA_FILE,
            "only with an https://",
        );
        let plain = [
            (env::KUBERNETES, "true"),
            (env::KUBERNETES_API_URL, "http://127.0.0.1:8001"),
        ];
        let with = |audiences: &'static str| {
            let mut pairs = plain.to_vec();
            pairs.push((env::KUBERNETES_AUDIENCES, audiences));
            pairs
        };
        let two = config(&with("shoal, mesh")).unwrap().kubernetes.unwrap();
        assert_eq!(two.audiences, ["shoal", "mesh"]);
        for bad in ["shoal,", ",", "sho al"] {
            refused(&with(bad), env::KUBERNETES_AUDIENCES, "audiences");
        }
    }

    #[test]
    fn webhook_settings_go_together() {
        assert_eq!(config(&[]).unwrap().webhook, None, "off by default");
        let on = config(&[
            (env::WEBHOOK_CERT_FILE, "/tls/tls.crt"),
            (env::WEBHOOK_KEY_FILE, "/tls/tls.key"),
        ])
        .unwrap()
        .webhook
        .unwrap();
        assert_eq!(on.addr.to_string(), "0.0.0.0:15017");
        assert_eq!(on.cert_file, PathBuf::from("/tls/tls.crt"));
        assert_eq!(on.injector_config_file, None);
        let files = [
            (env::WEBHOOK_CERT_FILE, "/tls/tls.crt"),
            (env::WEBHOOK_KEY_FILE, "/tls/tls.key"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut pairs = files.to_vec();
            pairs.push(extra);
            config(&pairs)
        };
        let set = with((
            env::INJECTOR_CONFIG_FILE,
            "/etc/shoal/injector/injector.yaml",
        ))
        .unwrap();
        assert_eq!(
            set.webhook.unwrap().injector_config_file,
            Some(PathBuf::from("/etc/shoal/injector/injector.yaml"))
        );
        for (pairs, named) in [
            (
                vec![(env::WEBHOOK_CERT_FILE, "/tls/tls.crt")],
                env::WEBHOOK_KEY_FILE,
            ),
            (
                vec![(env::WEBHOOK_KEY_FILE, "/tls/tls.key")],
                env::WEBHOOK_CERT_FILE,
            ),
            (
                vec![(env::WEBHOOK_ADDR, "0.0.0.0:15017")],
                env::WEBHOOK_ADDR,
            ),
            (
                vec![(env::INJECTOR_CONFIG_FILE, "/x.yaml")],
                env::INJECTOR_CONFIG_FILE,
            ),
        ] {
            let error = config(&pairs).unwrap_err().to_string();
            assert!(error.contains(named), "{error}");
        }
        let error = with((env::WEBHOOK_ADDR, "15017")).unwrap_err().to_string();
        assert!(error.contains("SHOAL_CP_WEBHOOK_ADDR=\"15017\""), "{error}");
        let error = with((env::WEBHOOK_ADDR, "0.0.0.0:15014"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SHOAL_CP_WEBHOOK_ADDR"),
            "clashes with metrics: {error}"
        );
    }

    #[test]
    fn the_admin_request_limit_is_checked_within_its_bounds() {
        assert_eq!(
            config(&[]).unwrap().admin_max_request_bytes,
            4 * 1024 * 1024
        );
        let set = config(&[(env::ADMIN_MAX_REQUEST_BYTES, "65536")]).unwrap();
        assert_eq!(set.admin_max_request_bytes, 65536);
        for value in ["65535", "15728641", "4MiB", "-1"] {
            let error = config(&[(env::ADMIN_MAX_REQUEST_BYTES, value)])
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                format!(
                    "invalid configuration: SHOAL_CP_ADMIN_MAX_REQUEST_BYTES={value:?}: expected a number of \
                     bytes from 65536 to 15728640"
                )
            );
        }
    }
}
