//! The demo mesh: which workloads run, on which ports, and the resources that describe them to the control
//! plane.
//!
//! ```text
//!  curl ─▶ frontend sidecar ─▶ frontend ─▶ frontend sidecar ─┬─▶ backend-v1 sidecar ─▶ backend v1
//!          (inbound)                       (outbound)        ├─▶ backend-v2 sidecar ─▶ backend v2
//!                                                            └─▶ greeter sidecar ────▶ greeter (gRPC)
//! ```
//!
//! Every service is registered at its sidecar's *inbound* listener, so each call crosses two sidecars. The
//! services are `frontend`, `greeter`, `backend-v1`, `backend-v2` and `backend` (both versions' endpoints);
//! the Route `backend` decides how `backend`'s traffic splits between the versions.

use std::net::{Ipv4Addr, SocketAddr};

use super::demo::Role;
use super::ports::Ports;

/// One demo app and its sidecar.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Its name: the sidecar's service name and proxy id, and its registration's service.
    pub name: &'static str,
    /// What the app does.
    pub role: Role,
    /// The version a backend reports.
    pub version: &'static str,
    /// Position in the port layout (workload k uses base + 100k ...).
    pub slot: u16,
}

/// The workloads, in start order: callees first, so the frontend's first calls find them up.
pub static WORKLOADS: [Workload; 4] = [
    Workload {
        name: "backend-v1",
        role: Role::Backend,
        version: "v1",
        slot: 2,
    },
    Workload {
        name: "backend-v2",
        role: Role::Backend,
        version: "v2",
        slot: 3,
    },
    Workload {
        name: "greeter",
        role: Role::Greeter,
        version: "v1",
        slot: 4,
    },
    Workload {
        name: "frontend",
        role: Role::Frontend,
        version: "v1",
        slot: 1,
    },
];

/// A workload's addresses, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// The app.
    pub app: SocketAddr,
    /// The sidecar's outbound listener (what the app calls).
    pub outbound: SocketAddr,
    /// The sidecar's inbound listener (where the service is registered).
    pub inbound: SocketAddr,
    /// The sidecar's admin listener (`/metrics`, `/config`).
    pub admin: SocketAddr,
}

impl Workload {
    /// Picks its four ports.
    pub fn addrs(&self, ports: &mut Ports) -> Result<Addrs, String> {
        let base = self.slot * 100;
        let mut take = |offset: u16, what: &str| -> Result<SocketAddr, String> {
            let what = format!("{} {what}", self.name);
            let port = ports.take(base + offset, &what)?;
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        };
        Ok(Addrs {
            app: take(0, "app")?,
            outbound: take(1, "sidecar outbound")?,
            inbound: take(6, "sidecar inbound")?,
            admin: take(21, "sidecar admin")?,
        })
    }
}

/// The resources `shoal up` applies: services, registrations at the sidecars' inbound listeners, and a
/// Route sending `backend` to v1 (v2 for requests with `x-canary: 1`). `inbound(name)` is a workload's
/// inbound port. Every workload runs as the service account of its name, so its registration carries
/// that SPIFFE id (in `trust_domain`) and callers' sidecars demand it over mTLS. Services only the mesh
/// calls are `strict`; the frontend stays `permissive` so a plain `curl` from outside still reaches it.
pub fn mesh_yaml(inbound: impl Fn(&str) -> u16, trust_domain: &str) -> String {
    let mut yaml = String::from(
        "# The demo mesh `shoal up` applied. Edit and `shoalctl apply -f` this file to change it.\n",
    );
    let services = [
        ("frontend", "http1", "permissive"),
        ("backend", "http1", "strict"),
        ("backend-v1", "http1", "strict"),
        ("backend-v2", "http1", "strict"),
        ("greeter", "grpc", "strict"),
    ];
    // Port 80: a `Host: backend` without a port means port 80.
    for (name, protocol, tls) in services {
        yaml += &format!(
            "---\nkind: Service\nmetadata: {{name: {name}, labels: {{app: shoal-up}}}}\nspec:\n  tls_mode: {tls}\n  ports: [{{name: http, port: 80, protocol: {protocol}}}]\n"
        );
    }
    let registrations = [
        ("frontend", "frontend", "frontend"),
        ("backend-v1", "backend-v1", "backend-v1"),
        ("backend-v2", "backend-v2", "backend-v2"),
        ("backend-v1-in-backend", "backend", "backend-v1"),
        ("backend-v2-in-backend", "backend", "backend-v2"),
        ("greeter", "greeter", "greeter"),
    ];
    for (name, service, workload) in registrations {
        yaml += &format!(
            "---\nkind: EndpointRegistration\nmetadata: {{name: {name}}}\nspec: {{service: {service}, address: 127.0.0.1, port: {}, identity: \"{}\"}}\n",
            inbound(workload),
            spiffe_id(trust_domain, workload)
        );
    }
    yaml += "---\nkind: Route\nmetadata: {name: backend}\nspec:\n  parent_service: backend\n  rules:\n  \
             - name: canary\n    matches: [{headers: [{name: x-canary, exact: \"1\"}]}]\n    \
             backends: [{service: backend-v2}]\n  \
             - name: stable\n    backends: [{service: backend-v1, weight: 100}]\n";
    yaml
}

/// The identity of a demo workload: the service account of its name, in `default`.
pub fn spiffe_id(trust_domain: &str, workload: &str) -> String {
    format!("spiffe://{trust_domain}/ns/default/sa/{workload}")
}

/// The Route that sends `v1_percent`% of `backend`'s traffic to v1 and the rest to v2.
pub fn split_route(v1_percent: u32) -> String {
    let mut backends = String::new();
    if v1_percent > 0 {
        backends += &format!("    - {{service: backend-v1, weight: {v1_percent}}}\n");
    }
    if v1_percent < 100 {
        backends += &format!(
            "    - {{service: backend-v2, weight: {}}}\n",
            100 - v1_percent
        );
    }
    format!(
        "kind: Route\nmetadata: {{name: backend}}\nspec:\n  parent_service: backend\n  rules:\n  - backends:\n{backends}"
    )
}
