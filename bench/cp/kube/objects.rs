//! The cluster the Kubernetes mode fills the fake API server with: Services `svc-NNNNN` in namespace
//! `bench` (the names `seed::qualified` gives, so the simulated proxies subscribe to them unchanged),
//! one EndpointSlice each whose endpoints point at meshed Pods, and the Pods.
//!
//! The marker (see `tracker`) of an EndpointSlice is its port above [`PORT_BASE`]: every endpoint of a
//! Kubernetes service has weight 1, and the port is what the control plane copies into each endpoint.

use serde_json::{Value, json};

use crate::seed::{NAMESPACE, service_name};

/// The slice port of marker 0 (the port every slice is created with).
pub const PORT_BASE: u16 = 20_000;

/// The highest marker a slice can carry.
pub const MAX_MARKER: u64 = (u16::MAX - PORT_BASE) as u64;

/// Service `s` with one port, 80 (`http`, target: the named port `http`), and a cluster IP of its own.
pub fn service(s: usize) -> Value {
    let ip = format!("10.{}.{}.{}", 96 + s / 65_536, (s / 256) % 256, s % 256);
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": service_name(s), "namespace": NAMESPACE},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
        ]}
    })
}

/// The EndpointSlice of service `s`: `per_service` ready endpoints, endpoint `j` being pod
/// `s × per_service + j` (named as its `targetRef` when that pod exists, i.e. is below `pods`), on
/// port [`PORT_BASE`] + `marker`.
pub fn slice(s: usize, per_service: usize, pods: usize, marker: u64) -> Value {
    let endpoints: Vec<Value> = (0..per_service)
        .map(|j| {
            let e = s * per_service + j;
            let address = format!("10.{}.{}.{}", 128 + e / 65_536, (e / 256) % 256, e % 256);
            let mut endpoint = json!({
                "addresses": [address],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            });
            if e < pods {
                endpoint["targetRef"] =
                    json!({"kind": "Pod", "namespace": NAMESPACE, "name": pod_name(e)});
            }
            endpoint
        })
        .collect();
    let port = u64::from(PORT_BASE) + marker;
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": service_name(s), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": service_name(s)}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// Pod `i` with Shoal's sidecar, running as the service account named after its service (pods beyond
/// the services' endpoints run as `idle`).
pub fn pod(i: usize, per_service: usize, services: usize) -> Value {
    let account = if i / per_service < services {
        service_name(i / per_service)
    } else {
        "idle".to_owned()
    };
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": pod_name(i), "namespace": NAMESPACE},
        "spec": {"serviceAccountName": account,
                 "initContainers": [{"name": "shoal-init", "image": "shoal"},
                                    {"name": "shoal-proxy", "image": "shoal"}],
                 "containers": [{"name": "app", "image": "app"}]}
    })
}

fn pod_name(i: usize) -> String {
    format!("pod-{i:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_name_their_pods_and_carry_the_marker_in_the_port() {
        let s = slice(2, 4, 10, 7);
        assert_eq!(s["ports"][0]["port"], 20_007);
        let endpoints = s["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 4);
        assert_eq!(endpoints[0]["addresses"][0], "10.128.0.8");
        assert_eq!(endpoints[1]["targetRef"]["name"], "pod-000009");
        // Pods 10 and 11 do not exist.
        assert!(endpoints[2].get("targetRef").is_none());
        assert_eq!(pod(9, 4, 3)["spec"]["serviceAccountName"], service_name(2));
        assert_eq!(pod(12, 4, 3)["spec"]["serviceAccountName"], "idle");
    }
}
