//! `shoalctl ca status|anchors|rotate`: the mesh CA's roots and their states (ACTIVE, PENDING, RETIRING),
//! the PEM trust anchors proxies verify the control plane with, and starting a root rotation.

use std::path::Path;

use serde_json::json;
use shoal_proto::v1;

use super::error::CliError;
use super::table::Table;
use super::token::{print_structured, time};
use super::{Output, client};

/// `ca status`.
pub(super) async fn status(server: &str, output: Option<Output>) -> Result<(), CliError> {
    let mut client = client::connect(server).await?;
    let status = (client.ca_status(v1::CaStatusRequest {}).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    print_status(&status, output)
}

/// `ca anchors`: the roots as one PEM bundle on stdout, ready for `SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE`.
pub(super) async fn anchors(server: &str) -> Result<(), CliError> {
    let mut client = client::connect(server).await?;
    let status = (client.ca_status(v1::CaStatusRequest {}).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    for root in &status.roots {
        println!("{}", root.certificate_pem.trim_end());
    }
    Ok(())
}

/// `ca rotate`: a generated root, or the operator's (`--cert` + `--key`), `PENDING` until proxies have it
/// (at most `--activate-after`).
pub(super) async fn rotate(
    server: &str,
    (cert, key): (Option<&Path>, Option<&Path>),
    activate_after: Option<&str>,
    output: Option<Output>,
) -> Result<(), CliError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Input(format!("{flag} {}: {e}", path.display())))
    };
    let mut request = match (cert, key) {
        (None, None) => v1::RotateCaRequest::default(),
        (Some(cert), Some(key)) => v1::RotateCaRequest {
            root_certificate_pem: read("--cert", cert)?,
            root_private_key_pem: read("--key", key)?,
            ..Default::default()
        },
        _ => {
            return Err(CliError::Input(
                "--cert and --key go together: the new root certificate and its private key".into(),
            ));
        }
    };
    if let Some(text) = activate_after {
        request.activate_after_seconds = activate_after_seconds(text)?;
    }
    let mut client = client::connect(server).await?;
    let response = (client.rotate_ca(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    let status = response.status.unwrap_or_default();
    let find = |state: v1::CaRootState| status.roots.iter().find(|r| r.state == state as i32);
    if let Some(pending) = find(v1::CaRootState::Pending) {
        eprintln!(
            "CA rotation started: the new root {} is PENDING: pushed to every proxy and trusted, while the current root keeps signing; it signs once every connected proxy has acknowledged it (at the latest {}), then the old root retires after one certificate lifetime",
            short(&pending.fingerprint_sha256),
            time(pending.activate_by_unix_seconds)
        );
    } else if let Some(retiring) = find(v1::CaRootState::Retiring) {
        eprintln!(
            "CA rotation started: new certificates are signed by the new root; the old root {} stays trusted until {}",
            short(&retiring.fingerprint_sha256),
            time(retiring.retire_at_unix_seconds)
        );
    }
    print_status(&status, output)
}

/// `--activate-after` in whole seconds (rounded up), 1 s to 24 h.
fn activate_after_seconds(text: &str) -> Result<u64, CliError> {
    let invalid = |why: String| {
        CliError::Input(format!(
            "--activate-after {text:?}: expected a duration from 1s to 24h, such as 5m{why}"
        ))
    };
    let duration = humantime::parse_duration(text).map_err(|e| invalid(format!(" ({e})")))?;
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    if !(1..=86_400).contains(&seconds) {
        return Err(invalid(String::new()));
    }
    Ok(seconds)
}

fn print_status(status: &v1::CaStatusResponse, output: Option<Output>) -> Result<(), CliError> {
    if matches!(output, Some(Output::Json | Output::Yaml)) {
        let roots: Vec<_> = status
            .roots
            .iter()
            .map(|r| {
                json!({
                    "fingerprintSha256": r.fingerprint_sha256,
                    "state": state(r.state),
                    "notBefore": time(r.not_before_unix_seconds),
                    "notAfter": time(r.not_after_unix_seconds),
                    "retireAt": (r.retire_at_unix_seconds > 0).then(|| time(r.retire_at_unix_seconds)),
                    "pendingSince": (r.pending_since_unix_seconds > 0).then(|| time(r.pending_since_unix_seconds)),
                    "activateBy": (r.activate_by_unix_seconds > 0).then(|| time(r.activate_by_unix_seconds)),
                    "certificatePem": r.certificate_pem,
                })
            })
            .collect();
        let value = json!({
            "trustDomain": status.trust_domain,
            "workloadCertificateTtlSeconds": status.workload_certificate_ttl_seconds,
            "roots": roots,
        });
        return print_structured(&value, output);
    }
    println!(
        "trust domain {}, workload certificates valid {}",
        status.trust_domain,
        humantime::format_duration(std::time::Duration::from_secs(
            status.workload_certificate_ttl_seconds
        ))
    );
    let mut table = Table::new(&[
        "ROOT (SHA-256)",
        "STATE",
        "NOT AFTER",
        "ACTIVATES BY",
        "RETIRES AT",
    ]);
    let when = |unix: u64| if unix > 0 { time(unix) } else { "-".to_owned() };
    for root in &status.roots {
        table.row(vec![
            root.fingerprint_sha256.clone(),
            state(root.state).to_owned(),
            time(root.not_after_unix_seconds),
            when(root.activate_by_unix_seconds),
            when(root.retire_at_unix_seconds),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn state(state: i32) -> &'static str {
    match v1::CaRootState::try_from(state) {
        Ok(v1::CaRootState::Active) => "ACTIVE",
        Ok(v1::CaRootState::Retiring) => "RETIRING",
        Ok(v1::CaRootState::Pending) => "PENDING",
        _ => "?",
    }
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_after_is_a_bounded_duration_in_seconds() {
        assert_eq!(activate_after_seconds("5m").unwrap(), 300);
        assert_eq!(activate_after_seconds("1500ms").unwrap(), 2, "rounded up");
        for bad in ["0s", "25h", "soon"] {
            let error = activate_after_seconds(bad).unwrap_err().to_string();
            assert!(error.contains("--activate-after"), "{error}");
            assert!(error.contains("1s to 24h"), "{error}");
        }
    }
}
