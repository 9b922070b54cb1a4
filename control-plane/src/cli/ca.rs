//! `shoalctl ca status|anchors|rotate`: the mesh CA's roots (as a table, or as the PEM trust anchors proxies
//! verify the control plane with), and starting a root rotation.

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

/// `ca rotate`: a generated root, or the operator's (`--cert` + `--key`).
pub(super) async fn rotate(
    server: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    output: Option<Output>,
) -> Result<(), CliError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Input(format!("{flag} {}: {e}", path.display())))
    };
    let request = match (cert, key) {
        (None, None) => v1::RotateCaRequest::default(),
        (Some(cert), Some(key)) => v1::RotateCaRequest {
            root_certificate_pem: read("--cert", cert)?,
            root_private_key_pem: read("--key", key)?,
        },
        _ => {
            return Err(CliError::Input(
                "--cert and --key go together: the new root certificate and its private key".into(),
            ));
        }
    };
    let mut client = client::connect(server).await?;
    let response = (client.rotate_ca(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    let status = response.status.unwrap_or_default();
    if let Some(retiring) = status
        .roots
        .iter()
        .find(|r| r.state == v1::CaRootState::Retiring as i32)
    {
        eprintln!(
            "CA rotation started: new certificates are signed by the new root; the old root {} stays trusted until {}",
            short(&retiring.fingerprint_sha256),
            time(retiring.retire_at_unix_seconds)
        );
    }
    print_status(&status, output)
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
    let mut table = Table::new(&["ROOT (SHA-256)", "STATE", "NOT AFTER", "RETIRES AT"]);
    for root in &status.roots {
        let retire = if root.retire_at_unix_seconds > 0 {
            time(root.retire_at_unix_seconds)
        } else {
            "-".to_owned()
        };
        table.row(vec![
            root.fingerprint_sha256.clone(),
            state(root.state).to_owned(),
            time(root.not_after_unix_seconds),
            retire,
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn state(state: i32) -> &'static str {
    match v1::CaRootState::try_from(state) {
        Ok(v1::CaRootState::Active) => "ACTIVE",
        Ok(v1::CaRootState::Retiring) => "RETIRING",
        _ => "?",
    }
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}
