//! `shoalctl status`: every connected proxy, the identity it proved on its discovery stream, and its sync
//! state (SYNCED / STALE / NACKED); a proxy whose stream ended within the control plane's grace period is
//! DISCONNECTED, with when it was last seen.

use serde_json::json;
use shoal_proto::v1;

use super::error::CliError;
use super::table::Table;
use super::token::{print_structured, time};
use super::{Output, client};

/// Prints the proxies connected to the control plane.
pub(super) async fn run(
    server: &str,
    namespace: Option<&str>,
    output: Option<Output>,
) -> Result<(), CliError> {
    let mut client = client::connect(server).await?;
    let request = v1::StatusRequest {
        namespace: namespace.unwrap_or_default().to_owned(),
        proxy_id: String::new(),
    };
    let proxies = (client.status(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner()
        .proxies;
    if matches!(output, Some(Output::Json | Output::Yaml)) {
        let documents: Vec<serde_json::Value> = proxies.iter().map(document).collect();
        return print_structured(&serde_json::Value::Array(documents), output);
    }
    if proxies.is_empty() {
        eprintln!("no proxies connected");
        return Ok(());
    }
    let table = match output {
        Some(Output::Wide) => per_resource(&proxies),
        _ => per_proxy(&proxies),
    };
    print!("{}", table.render());
    Ok(())
}

fn per_proxy(proxies: &[v1::ProxyStatus]) -> Table {
    let mut table = Table::new(&[
        "PROXY",
        "WORKLOAD",
        "IDENTITY",
        "NODE",
        "SEEN",
        "STATE",
        "RESOURCES",
        "LAST NACK",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for proxy in proxies {
        let synced = (proxy.resources.iter())
            .filter(|r| r.state == v1::SyncState::Synced as i32)
            .count();
        table.row(vec![
            proxy.proxy_id.clone(),
            workload(proxy.workload.as_ref()),
            identity(proxy),
            proxy.node.clone(),
            seen(proxy, now),
            proxy_state(proxy),
            format!("{synced}/{} synced", proxy.resources.len()),
            proxy.last_nack_error.clone(),
        ]);
    }
    table
}

fn per_resource(proxies: &[v1::ProxyStatus]) -> Table {
    let headers = [
        "PROXY",
        "RESOURCE",
        "CURRENT",
        "ACKED",
        "STATE",
        "NACK ERROR",
    ];
    let mut table = Table::new(&headers);
    for proxy in proxies {
        for resource in &proxy.resources {
            let key = resource.key.as_ref().map_or_else(String::new, |key| {
                let kind = v1::ResourceType::try_from(key.r#type).map_or("?", |t| {
                    t.as_str_name().trim_start_matches("RESOURCE_TYPE_")
                });
                format!("{}/{}", kind.to_ascii_lowercase(), key.name)
            });
            table.row(vec![
                proxy.proxy_id.clone(),
                key,
                resource.current_version.clone(),
                resource.acked_version.clone(),
                state(resource.state),
                resource.last_nack_error.clone(),
            ]);
        }
    }
    table
}

/// The STATE column: `DISCONNECTED` for a proxy whose stream ended (its sync state is moot: nothing can
/// reach it), else its sync state.
fn proxy_state(proxy: &v1::ProxyStatus) -> String {
    if proxy.disconnected {
        "DISCONNECTED".to_owned()
    } else {
        state(proxy.state)
    }
}

/// The SEEN column: `now` while connected, else how long ago its stream ended (`42s ago`, `3m05s ago`).
fn seen(proxy: &v1::ProxyStatus, now_unix: u64) -> String {
    if !proxy.disconnected {
        return "now".to_owned();
    }
    let ago = now_unix.saturating_sub(proxy.disconnected_at_unix_seconds);
    match ago {
        0..60 => format!("{ago}s ago"),
        60..3600 => format!("{}m{:02}s ago", ago / 60, ago % 60),
        _ => format!("{}h{:02}m ago", ago / 3600, ago % 3600 / 60),
    }
}

fn workload(workload: Option<&v1::WorkloadIdentity>) -> String {
    workload.map_or_else(String::new, |w| {
        let service = if w.service_name.is_empty() {
            "-"
        } else {
            &w.service_name
        };
        format!("{}/{} ({})", w.namespace, service, w.service_account)
    })
}

/// The IDENTITY column: the SPIFFE id the proxy's client certificate proved on its discovery stream
/// (`(MISMATCH)` appended when it names another workload than the proxy registered as), `none` over TLS
/// without a client certificate, `none (plaintext)` over the plaintext opt-in.
fn identity(proxy: &v1::ProxyStatus) -> String {
    use v1::DiscoveryTransport as T;
    match T::try_from(proxy.transport) {
        Ok(T::Mtls) if proxy.verified_identity.is_empty() => {
            "certificate without SPIFFE id".to_owned()
        }
        Ok(T::Mtls) if proxy.identity_mismatch => {
            format!("{} (MISMATCH)", proxy.verified_identity)
        }
        Ok(T::Mtls) => proxy.verified_identity.clone(),
        Ok(T::Tls) => "none".to_owned(),
        Ok(T::Plaintext) => "none (plaintext)".to_owned(),
        // A control plane older than the field.
        Ok(T::Unspecified) | Err(_) => "?".to_owned(),
    }
}

/// One proxy for `-o json|yaml`.
fn document(proxy: &v1::ProxyStatus) -> serde_json::Value {
    let workload = proxy.workload.clone().unwrap_or_default();
    let resources: Vec<serde_json::Value> = (proxy.resources.iter())
        .map(|r| {
            let key = r.key.clone().unwrap_or_default();
            json!({
                "type": v1::ResourceType::try_from(key.r#type)
                    .map_or("?", |t| t.as_str_name().trim_start_matches("RESOURCE_TYPE_")),
                "name": key.name,
                "currentVersion": r.current_version,
                "ackedVersion": r.acked_version,
                "state": state(r.state),
                "nackError": r.last_nack_error,
            })
        })
        .collect();
    json!({
        "proxyId": proxy.proxy_id,
        "workload": {
            "namespace": workload.namespace,
            "serviceAccount": workload.service_account,
            "service": workload.service_name,
        },
        "transport": v1::DiscoveryTransport::try_from(proxy.transport)
            .map_or("?", |t| t.as_str_name().trim_start_matches("DISCOVERY_TRANSPORT_")),
        "verifiedIdentity": proxy.verified_identity,
        "identityMismatch": proxy.identity_mismatch,
        "node": proxy.node,
        "proxyVersion": proxy.proxy_version,
        "address": proxy.address,
        "connectedSince": time(proxy.connected_since_unix_seconds),
        "connected": !proxy.disconnected,
        "disconnectedAt": proxy.disconnected.then(|| time(proxy.disconnected_at_unix_seconds)),
        "state": state(proxy.state),
        "lastNackError": proxy.last_nack_error,
        "resources": resources,
    })
}

fn state(state: i32) -> String {
    v1::SyncState::try_from(state)
        .map_or("?", |s| s.as_str_name().trim_start_matches("SYNC_STATE_"))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(transport: v1::DiscoveryTransport, verified: &str, mismatch: bool) -> v1::ProxyStatus {
        v1::ProxyStatus {
            proxy_id: "web-1".into(),
            workload: Some(v1::WorkloadIdentity {
                namespace: "default".into(),
                service_account: "frontend".into(),
                service_name: "web".into(),
            }),
            node: "node-a".into(),
            state: v1::SyncState::Synced as i32,
            transport: transport as i32,
            verified_identity: verified.into(),
            identity_mismatch: mismatch,
            ..Default::default()
        }
    }

    const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

    #[test]
    fn the_identity_column_names_the_proven_identity_or_why_there_is_none() {
        use v1::DiscoveryTransport as T;
        let cases = [
            (proxy(T::Mtls, FRONTEND, false), FRONTEND.to_owned()),
            (
                proxy(T::Mtls, FRONTEND, true),
                format!("{FRONTEND} (MISMATCH)"),
            ),
            (
                proxy(T::Mtls, "", false),
                "certificate without SPIFFE id".to_owned(),
            ),
            (proxy(T::Tls, "", false), "none".to_owned()),
            (
                proxy(T::Plaintext, "", false),
                "none (plaintext)".to_owned(),
            ),
            (proxy(T::Unspecified, "", false), "?".to_owned()),
        ];
        for (status, want) in cases {
            assert_eq!(identity(&status), want, "{status:?}");
        }
    }

    #[test]
    fn the_table_has_an_identity_column_after_the_workload() {
        let table = per_proxy(&[proxy(v1::DiscoveryTransport::Mtls, FRONTEND, false)]).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "PROXY",
                "WORKLOAD",
                "IDENTITY",
                "NODE",
                "SEEN",
                "STATE",
                "RESOURCES",
                "LAST",
                "NACK"
            ]
        );
        let column = lines[0].find("IDENTITY").unwrap();
        assert!(
            lines[1][column..].starts_with(&format!("{FRONTEND}  node-a  now   SYNCED")),
            "{table}"
        );
    }

    #[test]
    fn a_disconnected_proxy_shows_when_it_was_last_seen() {
        let mut gone = proxy(v1::DiscoveryTransport::Mtls, FRONTEND, false);
        gone.disconnected = true;
        gone.disconnected_at_unix_seconds = 1_000;
        assert_eq!(proxy_state(&gone), "DISCONNECTED");
        assert_eq!(seen(&gone, 1_042), "42s ago");
        assert_eq!(seen(&gone, 1_185), "3m05s ago");
        assert_eq!(seen(&gone, 1_000 + 7_260), "2h01m ago");
        let doc = document(&gone);
        assert_eq!(doc["connected"], false);
        assert_eq!(doc["disconnectedAt"], "1970-01-01T00:16:40Z");
        let here = document(&proxy(v1::DiscoveryTransport::Mtls, FRONTEND, false));
        assert_eq!(
            (&here["connected"], &here["disconnectedAt"]),
            (&json!(true), &json!(null))
        );
    }

    #[test]
    fn documents_carry_the_transport_and_the_verified_identity() {
        let doc = document(&proxy(v1::DiscoveryTransport::Mtls, FRONTEND, true));
        assert_eq!(doc["transport"], "MTLS");
        assert_eq!(doc["verifiedIdentity"], FRONTEND);
        assert_eq!(doc["identityMismatch"], true);
        assert_eq!(doc["workload"]["serviceAccount"], "frontend");
        let doc = document(&proxy(v1::DiscoveryTransport::Plaintext, "", false));
        assert_eq!(
            (
                &doc["transport"],
                &doc["verifiedIdentity"],
                &doc["identityMismatch"]
            ),
            (&json!("PLAINTEXT"), &json!(""), &json!(false))
        );
    }
}
