//! `shoalctl token create|list|revoke`: join tokens, the credential of workloads outside Kubernetes.
//!
//! `create` prints the token alone on stdout, so `TOKEN=$(shoalctl token create ...)` works; its details
//! go to stderr, or to stdout as YAML/JSON with `-o`.

use std::time::{Duration, SystemTime};

use serde_json::json;
use shoal_proto::v1;

use super::error::CliError;
use super::table::Table;
use super::{Output, client};

/// `token create`.
pub(super) async fn create(
    server: &str,
    namespace: &str,
    service_account: &str,
    ttl: Option<&str>,
    uses: u32,
    output: Option<Output>,
) -> Result<(), CliError> {
    let ttl_seconds = match ttl {
        None => 0,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| {
                CliError::Input(format!(
                    "--ttl {text:?}: expected a duration such as 30m or 1h ({e})"
                ))
            })?
            .as_secs()
            .max(1),
    };
    let mut client = client::connect(server).await?;
    let request = v1::CreateJoinTokenRequest {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        ttl_seconds,
        max_uses: uses,
    };
    let created = (client.create_join_token(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    let info = created.info.unwrap_or_default();
    match output {
        Some(Output::Json | Output::Yaml) => {
            let mut value = info_json(&info);
            value["token"] = json!(created.token);
            print_structured(&value, output)?;
        }
        _ => {
            println!("{}", created.token);
            eprintln!(
                "join token {} for ns/{}/sa/{}: expires {}, {}",
                info.id,
                info.namespace,
                info.service_account,
                time(info.expires_at_unix_seconds),
                uses_text(info.max_uses)
            );
        }
    }
    Ok(())
}

/// `token list`.
pub(super) async fn list(
    server: &str,
    namespace: Option<&str>,
    output: Option<Output>,
) -> Result<(), CliError> {
    let mut client = client::connect(server).await?;
    let request = v1::ListJoinTokensRequest {
        namespace: namespace.unwrap_or_default().to_owned(),
    };
    let tokens = (client.list_join_tokens(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner()
        .tokens;
    if matches!(output, Some(Output::Json | Output::Yaml)) {
        let values: Vec<_> = tokens.iter().map(info_json).collect();
        return print_structured(&json!(values), output);
    }
    if tokens.is_empty() {
        eprintln!("no join tokens");
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "NAMESPACE",
        "SERVICE ACCOUNT",
        "EXPIRES",
        "USES",
        "STATE",
    ]);
    for t in &tokens {
        let uses = if t.max_uses == 0 {
            format!("{}/unlimited", t.uses)
        } else {
            format!("{}/{}", t.uses, t.max_uses)
        };
        let state = if t.revoked {
            "revoked"
        } else if t.max_uses > 0 && t.uses >= t.max_uses {
            "used up"
        } else {
            "valid"
        };
        table.row(vec![
            t.id.clone(),
            t.namespace.clone(),
            t.service_account.clone(),
            time(t.expires_at_unix_seconds),
            uses,
            state.to_owned(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// `token revoke`.
pub(super) async fn revoke(server: &str, id: &str) -> Result<(), CliError> {
    let mut client = client::connect(server).await?;
    let request = v1::RevokeJoinTokenRequest { id: id.to_owned() };
    let info = (client.revoke_join_token(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner()
        .info
        .unwrap_or_default();
    println!(
        "join token {} revoked (ns/{}/sa/{}); certificates issued with it stay valid until they expire",
        info.id, info.namespace, info.service_account
    );
    Ok(())
}

fn info_json(info: &v1::JoinTokenInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "namespace": info.namespace,
        "serviceAccount": info.service_account,
        "createdAt": time(info.created_at_unix_seconds),
        "expiresAt": time(info.expires_at_unix_seconds),
        "maxUses": info.max_uses,
        "uses": info.uses,
        "revoked": info.revoked,
    })
}

fn uses_text(max_uses: u32) -> String {
    match max_uses {
        0 => "unlimited uses".to_owned(),
        1 => "single use".to_owned(),
        n => format!("{n} uses"),
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub(super) fn time(unix_seconds: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Prints `value` as YAML or JSON (per `output`) on stdout.
pub(super) fn print_structured(
    value: &serde_json::Value,
    output: Option<Output>,
) -> Result<(), CliError> {
    let text = match output {
        Some(Output::Yaml) => {
            serde_yaml_ng::to_string(value).map_err(|e| CliError::Input(e.to_string()))?
        }
        _ => {
            serde_json::to_string_pretty(value).map_err(|e| CliError::Input(e.to_string()))? + "\n"
        }
    };
    print!("{text}");
    Ok(())
}
