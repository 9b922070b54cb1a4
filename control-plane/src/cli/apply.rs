//! `shoalctl apply -f FILE|-`: every document of a YAML stream, services first so that what refers to them
//! validates, each with `Apply` (create or overwrite).
//!
//! A service the server refuses is tried again after the other services of the file applied, for as long as
//! that helps: a file moving a host from one service to another applies whatever its order (the host is
//! free once the service giving it up is applied). One that still conflicts is refused, naming the field and
//! the service holding the host, like any invalid document.

use std::io::Read;

use prost::Message;
use shoal_proto::v1;
use shoal_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::error::CliError;
use super::{client, yaml};

/// Applies the resources in `file` (`-`: standard input).
pub(super) async fn run(server: &str, file: &str) -> Result<(), CliError> {
    let (origin, text) = read(file)?;
    let parsed = yaml::parse(&text).map_err(|e| CliError::Input(format!("{origin}: {e}")))?;
    if parsed.is_empty() {
        return Err(CliError::Input(format!("{origin}: no resources found")));
    }
    let mut client = client::connect(server).await?;
    let total = parsed.len();
    let mut failed = Vec::new();
    let outcome = apply_all(&mut client, server, parsed, &mut failed).await;
    // Refusals are reported in document order, also when the server went away half-way.
    failed.sort_by_key(|(item, _)| item.index);
    for (item, error) in &failed {
        let subject = subject(&item.resource);
        eprintln!("error: {subject} (document {}): {error}", item.index);
    }
    outcome?;
    if failed.is_empty() {
        Ok(())
    } else {
        let failed = failed.len();
        Err(CliError::Partial { failed, total })
    }
}

/// Applies `parsed`, services first, then everything else in file order; refused documents go to `failed`.
/// An error only if the server cannot be reached.
async fn apply_all(
    client: &mut AdminClient<Channel>,
    server: &str,
    parsed: Vec<yaml::Parsed>,
    failed: &mut Vec<(yaml::Parsed, CliError)>,
) -> Result<(), CliError> {
    let (services, others): (Vec<_>, Vec<_>) =
        (parsed.into_iter()).partition(|p| p.resource.kind == v1::ResourceKind::Service as i32);
    let mut pending = services;
    // Passes over the refused services until one applies none of them.
    loop {
        let before = pending.len();
        let mut refused = Vec::new();
        for item in pending {
            if let Some(error) = apply_one(client, server, &item).await? {
                refused.push((item, error));
            }
        }
        if refused.is_empty() || refused.len() == before {
            failed.extend(refused);
            break;
        }
        pending = refused.into_iter().map(|(item, _)| item).collect();
    }
    for item in others {
        if let Some(error) = apply_one(client, server, &item).await? {
            failed.push((item, error));
        }
    }
    Ok(())
}

/// Applies one document and prints what became of it; `Some(error)` if the server refused it (the caller
/// reports it), an error if the server cannot be reached.
async fn apply_one(
    client: &mut AdminClient<Channel>,
    server: &str,
    item: &yaml::Parsed,
) -> Result<Option<CliError>, CliError> {
    let request = v1::ApplyRequest {
        resource: Some(item.resource.clone()),
    };
    let bytes = request.encoded_len();
    match client.apply(request).await {
        Ok(response) => {
            let response = response.into_inner();
            let version = (response.resource.as_ref())
                .and_then(|r| r.metadata.as_ref())
                .map_or(0, |m| m.resource_version);
            let verb = if response.unchanged {
                "unchanged"
            } else if response.created {
                "created"
            } else {
                "configured"
            };
            println!("{} {verb} (version {version})", subject(&item.resource));
            Ok(None)
        }
        Err(status) => match CliError::from_status(server, &status) {
            error @ CliError::Unreachable { .. } => Err(error),
            _ if too_large(&status) => {
                Ok(Some(CliError::Server(too_large_message(&status, bytes))))
            }
            error => Ok(Some(error)),
        },
    }
}

/// Whether the server refused the request for its size (tonic's decoder, before any handler runs).
fn too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
}

/// What to do about a document over the control plane's request limit: the limit in bytes (from the server's
/// answer, which says it) and the setting that raises it.
fn too_large_message(status: &tonic::Status, bytes: usize) -> String {
    // tonic's text: "... found N bytes, the limit is: L bytes".
    let limit = (status.message().rsplit_once("the limit is: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map_or_else(|| "its limit".to_owned(), |limit| format!("{limit} bytes"));
    let (_, max) = crate::server::config::ADMIN_MAX_REQUEST_BYTES_BOUNDS;
    format!(
        "the resource is {bytes} bytes in its Apply request, more than the control plane accepts ({limit}): \
         raise SHOAL_CP_ADMIN_MAX_REQUEST_BYTES on the control plane (at most {max} bytes; \
         docs/control-plane.md#settings), or split the resource"
    )
}

/// `route/backend.default`: the kind as the CLI names it, then the qualified name.
pub(super) fn subject(resource: &v1::Resource) -> String {
    let kind = v1::ResourceKind::try_from(resource.kind)
        .ok()
        .and_then(|k| crate::model::ResourceKind::try_from(k).ok())
        .map_or("resource", |k| k.as_str());
    let meta = resource.metadata.clone().unwrap_or_default();
    let namespace = if meta.namespace.is_empty() {
        crate::model::DEFAULT_NAMESPACE
    } else {
        &meta.namespace
    };
    format!("{kind}/{}.{namespace}", meta.name)
}

/// The text of `file` (`-`: standard input) and how to name it in messages.
pub(super) fn read(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Input(format!("cannot read standard input: {e}")))?;
        return Ok(("<stdin>".to_owned(), text));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("cannot read {file}: {e}")))?;
    Ok((file.to_owned(), text))
}
