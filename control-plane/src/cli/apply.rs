//! `shoalctl apply -f FILE|-`: every document of a YAML stream, services first so that what refers to them
//! validates, each with `Apply` (create or overwrite).

use std::io::Read;

use shoal_proto::v1;

use super::error::CliError;
use super::{client, yaml};

/// Applies the resources in `file` (`-`: standard input).
pub(super) async fn run(server: &str, file: &str) -> Result<(), CliError> {
    let (origin, text) = read(file)?;
    let mut parsed = yaml::parse(&text).map_err(|e| CliError::Input(format!("{origin}: {e}")))?;
    if parsed.is_empty() {
        return Err(CliError::Input(format!("{origin}: no resources found")));
    }
    // Stable sort: services first, then everything else in file order.
    parsed.sort_by_key(|p| p.resource.kind != v1::ResourceKind::Service as i32);
    let mut client = client::connect(server).await?;
    let total = parsed.len();
    let mut failed = 0;
    for item in parsed {
        let subject = subject(&item.resource);
        let request = v1::ApplyRequest {
            resource: Some(item.resource),
        };
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
                println!("{subject} {verb} (version {version})");
            }
            Err(status) => match CliError::from_status(server, &status) {
                error @ CliError::Unreachable { .. } => return Err(error),
                error => {
                    failed += 1;
                    eprintln!("error: {subject} (document {}): {error}", item.index);
                }
            },
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::Partial { failed, total })
    }
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
