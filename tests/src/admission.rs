//! Driving the sidecar injector as the Kubernetes API server does: an `AdmissionReview` POSTed over HTTPS
//! ([`post`]), the answer's base64 JSONPatch decoded ([`base64_decode`]) and applied with an RFC 6902
//! implementation of the tests' own ([`apply_patch`], independent of the control plane's), and the result
//! checked with the real Kubernetes schemas ([`kubernetes_validate`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};

/// An admission.k8s.io/v1 review of a pod creation in `namespace`, as the API server sends it.
pub fn review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// `POST path` with a JSON body over TLS to `addr`, verifying the server as `server_name` against `root_pem`.
/// Returns the status and the body.
pub async fn post(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &str,
    path: &str,
    method: &str,
    body: &[u8],
) -> Result<(http::StatusCode, Vec<u8>)> {
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", server_name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

/// Standard base64 (RFC 4648, padded), as `AdmissionResponse.patch` is encoded.
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", char::from(c)),
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        bail!("base64 length {} is not a multiple of 4", bytes.len());
    }
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Ok(out)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into its parent and its last (unescaped) token.
fn split(path: &str) -> Result<(&str, String)> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{path:?} is not a JSON pointer"))?;
    Ok((parent, unescape(last)))
}

/// Applies an RFC 6902 patch (`add`, `remove`, `replace`, `test`) to `doc`; any failure is an error.
pub fn apply_patch(doc: &mut Value, patch: &Value) -> Result<()> {
    let ops = patch
        .as_array()
        .ok_or_else(|| anyhow!("a patch is an array"))?;
    for op in ops {
        let kind = op["op"].as_str().ok_or_else(|| anyhow!("no op in {op}"))?;
        let path = op["path"]
            .as_str()
            .ok_or_else(|| anyhow!("no path in {op}"))?;
        match kind {
            "add" => {
                let value = op.get("value").ok_or_else(|| anyhow!("no value in {op}"))?;
                let (parent, last) = split(path)?;
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.insert(last, value.clone());
                    }
                    Some(Value::Array(items)) => {
                        let index = if last == "-" {
                            items.len()
                        } else {
                            last.parse::<usize>()?
                        };
                        if index > items.len() {
                            bail!("{path}: index {index} beyond {}", items.len());
                        }
                        items.insert(index, value.clone());
                    }
                    _ => bail!("{path}: the parent {parent:?} does not exist"),
                }
            }
            "remove" | "replace" => {
                let (parent, last) = split(path)?;
                let target = doc
                    .pointer_mut(parent)
                    .ok_or_else(|| anyhow!("{path}: no parent"))?;
                let slot = match target {
                    Value::Object(map) => map.get_mut(&last),
                    Value::Array(items) => items.get_mut(last.parse::<usize>()?),
                    _ => None,
                }
                .ok_or_else(|| anyhow!("{path} does not exist"))?;
                if kind == "replace" {
                    *slot = op
                        .get("value")
                        .cloned()
                        .ok_or_else(|| anyhow!("no value"))?;
                } else {
                    match target {
                        Value::Object(map) => {
                            map.remove(&last);
                        }
                        Value::Array(items) => {
                            items.remove(last.parse::<usize>()?);
                        }
                        _ => unreachable!("checked above"),
                    }
                }
            }
            "test" => {
                if doc.pointer(path) != op.get("value") {
                    bail!("test {path} failed");
                }
            }
            other => bail!("op {other} is not supported here"),
        }
    }
    Ok(())
}

/// Validates Kubernetes manifests with `kubernetes-validate --strict` for Kubernetes `version` (the chart's
/// oldest, 1.28.0, knows native sidecars). A missing tool is an error, never a skip: `.ci/run` installs it.
pub fn kubernetes_validate(files: &[&Path], version: &str) -> Result<()> {
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run kubernetes-validate ({e}): install it (`pip install kubernetes-validate`, as .ci/run does)"
            )
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("WARN") || text.contains("ERROR") {
        bail!(
            "kubernetes-validate --strict -k {version} failed ({}):\n{text}",
            out.status
        );
    }
    Ok(())
}
