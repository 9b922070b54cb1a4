//! The static state file: services, endpoints and routes from YAML, without a control plane.
//!
//! Loaded at start-up, reloaded when the file changes (polled) or on SIGHUP. An invalid file is
//! rejected with an error naming the field, and the last good state keeps serving.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::Store;
use super::model::{Backend, Endpoint, HeaderMatch, Match, Protocol, RouteRule, Service, State};
use crate::balance::Balancer;
use crate::metrics::{Direction, RequestMetrics};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    services: Vec<ServiceSpec>,
    #[serde(default)]
    routes: Vec<RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    port: u16,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<IpAddr>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    address: SocketAddr,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    ready: bool,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    name: String,
    service: String,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    matches: Vec<MatchSpec>,
    backends: Vec<BackendSpec>,
    #[serde(default, with = "humantime_opt")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    path_prefix: Option<String>,
    method: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSpec {
    service: String,
    #[serde(default = "one")]
    weight: u32,
}

mod humantime_opt {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|_| {
                serde::de::Error::custom(format!("`{s}` is not a duration such as 500ms or 10s"))
            })
        })
        .transpose()
    }
}

/// Parses and validates state-file text into a [`State`]; errors name the offending field.
pub fn parse(text: &str) -> Result<State, String> {
    let spec: FileSpec = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    build(spec)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn build(spec: FileSpec) -> Result<State, String> {
    let mut services = Vec::with_capacity(spec.services.len());
    let mut by_name: HashMap<String, Arc<Service>> = HashMap::new();
    let mut claimed: HashMap<String, String> = HashMap::new();
    for (i, s) in spec.services.into_iter().enumerate() {
        let at = format!("services[{i}]");
        if !is_dns_label(&s.name) {
            return Err(format!(
                "{at}.name: `{}` is not a DNS label (a-z, 0-9, '-', at most 63)",
                s.name
            ));
        }
        if !is_dns_label(&s.namespace) {
            return Err(format!(
                "{at}.namespace: `{}` is not a DNS label",
                s.namespace
            ));
        }
        if s.port == 0 {
            return Err(format!("{at}.port: must be 1-65535"));
        }
        let qualified = format!("{}.{}", s.name, s.namespace);
        if by_name.contains_key(&qualified) {
            return Err(format!("{at}: service {qualified} is defined twice"));
        }
        for (j, e) in s.endpoints.iter().enumerate() {
            if e.weight == 0 || e.weight > 1_000_000 {
                return Err(format!(
                    "{at}.endpoints[{j}].weight: must be 1-1000000, got {}",
                    e.weight
                ));
            }
        }
        let mut authorities: Vec<String> = [
            s.name.clone(),
            qualified.clone(),
            format!("{qualified}.svc"),
            format!("{qualified}.svc.cluster.local"),
        ]
        .into_iter()
        .chain(s.hosts.iter().map(|h| h.to_ascii_lowercase()))
        .map(|h| format!("{h}:{}", s.port))
        .collect();
        // Port 80 is implied when clients omit it.
        if s.port == 80 {
            let bare: Vec<String> = authorities
                .iter()
                .map(|a| a.trim_end_matches(":80").to_string())
                .collect();
            authorities.extend(bare);
        }
        for a in &authorities {
            if let Some(owner) = claimed.insert(a.clone(), qualified.clone())
                && owner != qualified
            {
                return Err(format!(
                    "{at}: authority {a} is already used by service {owner}"
                ));
            }
        }
        let endpoints: Vec<Endpoint> = s
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addr: e.address,
                weight: e.weight,
                ready: e.ready,
            })
            .collect();
        let service = Arc::new(Service {
            id: i,
            balancer: Balancer::new(&endpoints),
            metrics: RequestMetrics::new(Direction::Outbound, &qualified, "default"),
            name: s.name,
            namespace: s.namespace,
            port: s.port,
            protocol: s.protocol,
            authorities,
            addresses: s.addresses,
            endpoints,
        });
        by_name.insert(qualified, service.clone());
        services.push(service);
    }

    let lookup = |name: &str| -> Option<Arc<Service>> {
        by_name
            .get(name)
            .or_else(|| by_name.get(&format!("{name}.default")))
            .cloned()
    };
    let mut routes: Vec<Vec<RouteRule>> = services.iter().map(|_| Vec::new()).collect();
    let mut route_names = HashSet::new();
    for (i, r) in spec.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.name.is_empty() || !route_names.insert(r.name.clone()) {
            return Err(format!("{at}.name: `{}` is empty or not unique", r.name));
        }
        let parent = lookup(&r.service)
            .ok_or_else(|| format!("{at}.service: unknown service `{}`", r.service))?;
        if r.rules.is_empty() {
            return Err(format!("{at}.rules: a route needs at least one rule"));
        }
        for (j, rule) in r.rules.into_iter().enumerate() {
            let at = format!("{at}.rules[{j}]");
            let mut matches = Vec::new();
            for (k, m) in rule.matches.into_iter().enumerate() {
                let at = format!("{at}.matches[{k}]");
                if m.path_prefix.is_none() && m.method.is_none() && m.headers.is_empty() {
                    return Err(format!(
                        "{at}: an empty match; omit `matches` to match everything"
                    ));
                }
                if let Some(p) = &m.path_prefix
                    && !p.starts_with('/')
                {
                    return Err(format!("{at}.path_prefix: `{p}` must start with '/'"));
                }
                let method = m
                    .method
                    .map(|s| {
                        http::Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                            .map_err(|_| format!("{at}.method: `{s}` is not an HTTP method"))
                    })
                    .transpose()?;
                let mut headers = Vec::new();
                for (name, value) in m.headers {
                    let name =
                        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("{at}.headers: `{name}` is not a header name"))?;
                    headers.push(HeaderMatch { name, value });
                }
                matches.push(Match {
                    path_prefix: m.path_prefix,
                    method,
                    headers,
                });
            }
            let mut backends = Vec::new();
            for (k, b) in rule.backends.into_iter().enumerate() {
                let service = lookup(&b.service).ok_or_else(|| {
                    format!(
                        "{at}.backends[{k}].service: unknown service `{}`",
                        b.service
                    )
                })?;
                if b.weight > 1_000_000 {
                    return Err(format!("{at}.backends[{k}].weight: at most 1000000"));
                }
                backends.push(Backend {
                    service,
                    weight: b.weight,
                });
            }
            if backends.iter().map(|b| b.weight).sum::<u32>() == 0 {
                return Err(format!(
                    "{at}.backends: weights sum to 0 (or no backends): nothing could be served"
                ));
            }
            if let Some(t) = rule.timeout
                && (t.is_zero() || t > Duration::from_secs(24 * 3600))
            {
                return Err(format!("{at}.timeout: must be between 1ms and 24h"));
            }
            routes[parent.id].push(RouteRule {
                metrics: RequestMetrics::new(
                    Direction::Outbound,
                    &parent.qualified_name(),
                    &r.name,
                ),
                route: r.name.clone(),
                matches,
                backends,
                timeout: rule.timeout,
            });
        }
    }
    Ok(State::new(services, routes))
}

/// Loads `path` into `store`; on error the store keeps its state and records the error.
pub fn load_into(store: &Store, path: &Path) -> Result<u64, String> {
    let result = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read state file {}: {e}", path.display()))
        .and_then(|text| {
            parse(&text).map_err(|e| format!("invalid state file {}: {e}", path.display()))
        });
    match result {
        Ok(state) => {
            let n = state.services.len();
            let version = store.replace(state);
            tracing::info!(path = %path.display(), services = n, version, "state file loaded");
            Ok(version)
        }
        Err(e) => {
            tracing::error!(error = %e, "state file rejected; keeping the last good state");
            store.reject(e.clone());
            Err(e)
        }
    }
}

/// Reloads the state file when it changes (polled every `interval`) or on SIGHUP.
pub async fn watch(store: Arc<Store>, path: PathBuf, interval: Duration) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut last = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = stamp(&path);
        if forced || now != last {
            last = now;
            let _ = load_into(&store, &path);
        }
    }
}

#[cfg(test)]
mod tests;
