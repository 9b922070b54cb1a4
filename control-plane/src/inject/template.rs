//! The injector's configuration: what every injected sidecar gets unless a pod's annotations say otherwise.
//!
//! Read from YAML (`SHOAL_CP_INJECTOR_CONFIG_FILE` for the webhook, `shoalctl inject --config FILE`); every
//! field is optional and unknown fields are errors. The chart renders this file from `injector.proxy.*`.

use serde::{Deserialize, Serialize};

use super::{annotations, quantity};

/// The fields of the configuration file, with the defaults of [`Template::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Template {
    /// The sidecar's image: the static `shoal-proxy` and nothing else. Default
    /// `shoal/shoal-proxy:<this version>`.
    pub image: String,
    /// The `shoal-init` container's image: `shoal-proxy` with iptables, which only the init container needs.
    /// Default `shoal/shoal-proxy-init:<this version>`.
    pub init_image: String,
    /// `Always`, `IfNotPresent` (default) or `Never`, for both images.
    pub image_pull_policy: String,
    /// The proxy's uid (`runAsUser`, and `shoal-proxy init --proxy-uid` so its connections are never
    /// captured). Default 1337; never 0.
    pub uid: u32,
    /// The proxy's listener ports.
    pub ports: Ports,
    /// The proxy's `SHOAL_LOG`. Default `info`.
    pub log_level: String,
    /// The proxy's `SHOAL_LOG_FORMAT`, `plain` or `json`. Default `plain`.
    pub log_format: String,
    /// The proxy container's requests and limits (Kubernetes quantities). Given in the file, it replaces the
    /// defaults whole (an amount left out is not set), as a container's `resources` does.
    pub resources: Resources,
    /// The proxy's `SHOAL_DISCOVERY_ADDR`. Default: `https://shoal-control-plane.<cp namespace>.svc:15010`.
    pub discovery_addr: Option<String>,
    /// The proxy's `SHOAL_CONTROL_PLANE_IDENTITY`. Default: the control plane's own SPIFFE id.
    pub control_plane_identity: Option<String>,
    /// `prometheus.io/scrape`, `/port`, `/path` annotations for the proxy's `/metrics`, added to pods that set
    /// none of their own. Default `true`.
    pub scrape_annotations: bool,
    /// The audience of the projected service-account token the proxy certifies itself with; must be one of
    /// the control plane's `SHOAL_CP_KUBERNETES_AUDIENCES`. Default `shoal`.
    pub token_audience: String,
    /// How long the kubelet makes that token valid (`expirationSeconds`; it rewrites the file at 80 % of it).
    /// At least 600 (the Kubernetes minimum). Default 3600.
    pub token_expiration_seconds: u32,
}

/// The proxy's listener ports (and `shoal-proxy init`'s matching flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ports {
    /// `SHOAL_OUTBOUND_ADDR` (127.0.0.1) and `SHOAL_INIT_OUTBOUND_PORT`. Default 15001.
    pub outbound: u16,
    /// `SHOAL_INBOUND_ADDR` (0.0.0.0) and `SHOAL_INIT_INBOUND_PORT`. Default 15006.
    pub inbound: u16,
    /// `SHOAL_ADMIN_ADDR` (0.0.0.0), `SHOAL_INIT_ADMIN_PORT`, and the probes. Default 15021.
    pub admin: u16,
}

/// Requests and limits of the proxy container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Requests. Default cpu 10m, memory 32Mi.
    pub requests: Amounts,
    /// Limits. Default memory 128Mi, no cpu limit.
    pub limits: Amounts,
}

/// CPU and memory quantities; `None` leaves the field out of the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Amounts {
    /// CPU, such as `100m` or `1`.
    pub cpu: Option<String>,
    /// Memory, such as `64Mi`.
    pub memory: Option<String>,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound: 15006,
            admin: 15021,
        }
    }
}

impl Default for Template {
    fn default() -> Self {
        Self {
            image: format!("shoal/shoal-proxy:{}", env!("CARGO_PKG_VERSION")),
            init_image: format!("shoal/shoal-proxy-init:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".to_owned(),
            uid: 1337,
            ports: Ports::default(),
            log_level: "info".to_owned(),
            log_format: "plain".to_owned(),
            resources: Resources {
                requests: Amounts {
                    cpu: Some("10m".to_owned()),
                    memory: Some("32Mi".to_owned()),
                },
                limits: Amounts {
                    cpu: None,
                    memory: Some("128Mi".to_owned()),
                },
            },
            discovery_addr: None,
            control_plane_identity: None,
            scrape_annotations: true,
            token_audience: crate::sources::kubernetes::DEFAULT_AUDIENCE.to_owned(),
            token_expiration_seconds: 3600,
        }
    }
}

/// Where the control plane is, for the defaults of [`Template::discovery_addr`] and
/// [`Template::control_plane_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneRef {
    /// The control plane's namespace (`SHOAL_CP_NAMESPACE`).
    pub namespace: String,
    /// The mesh's trust domain (`SHOAL_CP_TRUST_DOMAIN`).
    pub trust_domain: String,
}

impl Default for ControlPlaneRef {
    fn default() -> Self {
        Self {
            namespace: "shoal-system".to_owned(),
            trust_domain: "cluster.local".to_owned(),
        }
    }
}

impl Template {
    /// Reads a configuration file's text; the error names the field.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every field; the error names the first bad one and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        for (field, image, example) in [
            ("image", &self.image, "shoal/shoal-proxy:0.1.0"),
            (
                "init_image",
                &self.init_image,
                "shoal/shoal-proxy-init:0.1.0",
            ),
        ] {
            if image.trim().is_empty() || image.contains(char::is_whitespace) {
                return Err(format!(
                    "{field} {image:?}: expected an image reference such as {example}"
                ));
            }
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(format!(
                "image_pull_policy {:?}: expected Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        if self.uid == 0 {
            return Err(
                "uid 0: the proxy must not run as root (its uid is excluded from capture)".into(),
            );
        }
        let Ports {
            outbound,
            inbound,
            admin,
        } = self.ports;
        let named = [
            ("outbound", outbound),
            ("inbound", inbound),
            ("admin", admin),
        ];
        for (i, (name, port)) in named.iter().enumerate() {
            if *port == 0 {
                return Err(format!("ports.{name}: expected a port from 1 to 65535"));
            }
            if let Some((other, _)) = named[i + 1..].iter().find(|(_, p)| p == port) {
                return Err(format!(
                    "ports.{name} {port}: the same port as ports.{other}"
                ));
            }
        }
        annotations::check_log_filter(&self.log_level)
            .map_err(|e| format!("log_level {:?}: {e}", self.log_level))?;
        if !["plain", "json"].contains(&self.log_format.as_str()) {
            return Err(format!(
                "log_format {:?}: expected plain or json",
                self.log_format
            ));
        }
        let r = &self.resources;
        for (field, value) in [
            ("resources.requests.cpu", &r.requests.cpu),
            ("resources.requests.memory", &r.requests.memory),
            ("resources.limits.cpu", &r.limits.cpu),
            ("resources.limits.memory", &r.limits.memory),
        ] {
            if let Some(value) = value {
                quantity::parse(value).map_err(|e| format!("{field} {value:?}: {e}"))?;
            }
        }
        for (request, limit, name) in [
            (&r.requests.cpu, &r.limits.cpu, "cpu"),
            (&r.requests.memory, &r.limits.memory, "memory"),
        ] {
            if let (Some(request), Some(limit)) = (request, limit)
                && quantity::parse(request)? > quantity::parse(limit)?
            {
                return Err(format!(
                    "resources.requests.{name} {request} is more than resources.limits.{name} {limit}"
                ));
            }
        }
        if self.token_audience.is_empty() || self.token_audience.contains(char::is_whitespace) {
            return Err(format!(
                "token_audience {:?}: expected an audience such as shoal (one of the control plane's \
                 SHOAL_CP_KUBERNETES_AUDIENCES)",
                self.token_audience
            ));
        }
        if self.token_expiration_seconds < 600 {
            return Err(format!(
                "token_expiration_seconds {}: expected at least 600 (Kubernetes refuses shorter projected tokens)",
                self.token_expiration_seconds
            ));
        }
        if let Some(addr) = &self.discovery_addr {
            check_control_plane_url(addr).map_err(|e| format!("discovery_addr {addr:?}: {e}"))?;
        }
        if let Some(id) = &self.control_plane_identity
            && !id.starts_with("spiffe://")
        {
            return Err(format!(
                "control_plane_identity {id:?}: expected a SPIFFE id such as spiffe://cluster.local/ns/shoal-system/sa/shoal-control-plane"
            ));
        }
        Ok(())
    }
}

/// The forms `SHOAL_DISCOVERY_ADDR` takes: `HOST:PORT`, `https://HOST:PORT` or `http://HOST:PORT`.
fn check_control_plane_url(addr: &str) -> Result<(), String> {
    let rest = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    let expected =
        "expected https://HOST:PORT, such as https://shoal-control-plane.shoal-system.svc:15010";
    let (host, port) = rest.rsplit_once(':').ok_or(expected)?;
    if host.is_empty() || host.contains(['/', ' ']) || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(expected.to_owned());
    }
    Ok(())
}
