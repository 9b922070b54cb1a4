//! `shoalctl status`: every connected proxy and its sync state (SYNCED / STALE / NACKED).

use shoal_proto::v1;

use super::error::CliError;
use super::table::Table;
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
        "NODE",
        "STATE",
        "RESOURCES",
        "LAST NACK",
    ]);
    for proxy in proxies {
        let synced = (proxy.resources.iter())
            .filter(|r| r.state == v1::SyncState::Synced as i32)
            .count();
        table.row(vec![
            proxy.proxy_id.clone(),
            workload(proxy.workload.as_ref()),
            proxy.node.clone(),
            state(proxy.state),
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

fn state(state: i32) -> String {
    v1::SyncState::try_from(state)
        .map_or("?", |s| s.as_str_name().trim_start_matches("SYNC_STATE_"))
        .to_owned()
}
