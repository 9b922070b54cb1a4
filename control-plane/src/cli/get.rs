//! `shoalctl get KIND [NAME]` and `shoalctl delete KIND NAME`.

use shoal_proto::v1;

use super::error::CliError;
use super::table::Table;
use super::yaml::AnyDocument;
use super::{Output, apply::subject, client, kinds, summary};
use crate::model::DEFAULT_NAMESPACE;

/// Prints one resource, or every resource of a kind (in `namespace`, or all namespaces).
pub(super) async fn run(
    server: &str,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Option<Output>,
) -> Result<(), CliError> {
    let kind = kinds::parse(kind).map_err(CliError::Input)?;
    let wire_kind = v1::ResourceKind::from(kind) as i32;
    let mut client = client::connect(server).await?;
    let failed = |status: tonic::Status| CliError::from_status(server, &status);
    let Some(name) = name else {
        let request = v1::ListRequest {
            kind: wire_kind,
            namespace: namespace.unwrap_or_default().to_owned(),
            match_labels: Default::default(),
        };
        let resources = client
            .list(request)
            .await
            .map_err(failed)?
            .into_inner()
            .resources;
        if resources.is_empty() && !matches!(output, Some(Output::Json | Output::Yaml)) {
            let scope =
                namespace.map_or("any namespace".to_owned(), |ns| format!("namespace {ns}"));
            eprintln!("no {} resources found in {scope}", kinds::yaml_name(kind));
            return Ok(());
        }
        return print(&resources, output, true);
    };
    let request = v1::GetRequest {
        kind: wire_kind,
        namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
        name: name.to_owned(),
    };
    let response = client.get(request).await.map_err(failed)?.into_inner();
    print(
        &response.resource.into_iter().collect::<Vec<_>>(),
        output,
        false,
    )
}

/// Deletes one resource and says at which version.
pub(super) async fn delete(
    server: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Result<(), CliError> {
    let kind = kinds::parse(kind).map_err(CliError::Input)?;
    let mut client = client::connect(server).await?;
    let request = v1::DeleteRequest {
        kind: v1::ResourceKind::from(kind) as i32,
        namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
        name: name.to_owned(),
        expected_resource_version: 0,
    };
    let response = (client.delete(request).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    let subject = response
        .resource
        .as_ref()
        .map_or_else(|| name.to_owned(), subject);
    println!(
        "{subject} deleted (version {})",
        response.deleted_at_version
    );
    Ok(())
}

fn print(
    resources: &[v1::Resource],
    output: Option<Output>,
    listing: bool,
) -> Result<(), CliError> {
    match output {
        None | Some(Output::Wide) => {
            print!(
                "{}",
                table(resources, output == Some(Output::Wide)).render()
            );
        }
        Some(Output::Yaml) => {
            let documents = resources.iter().filter_map(AnyDocument::from_wire);
            let texts: Result<Vec<String>, String> = documents.map(|d| d.to_yaml()).collect();
            let texts =
                texts.map_err(|e| CliError::Server(format!("cannot print as YAML: {e}")))?;
            print!("{}", texts.join("---\n"));
        }
        Some(Output::Json) => {
            let mut documents: Vec<_> = resources
                .iter()
                .filter_map(AnyDocument::from_wire)
                .collect();
            let text = match (listing, documents.pop()) {
                (false, Some(one)) => serde_json::to_string_pretty(&one),
                (_, last) => {
                    documents.extend(last);
                    serde_json::to_string_pretty(&documents)
                }
            };
            let text = text.map_err(|e| CliError::Server(format!("cannot print as JSON: {e}")))?;
            println!("{text}");
        }
    }
    Ok(())
}

fn table(resources: &[v1::Resource], wide: bool) -> Table {
    let service_column = resources
        .first()
        .map_or("SERVICE", |r| summary::target_header(r));
    let mut headers = vec!["NAMESPACE", "NAME", "VERSION", service_column];
    if wide {
        headers.extend(["DETAILS", "LABELS"]);
    }
    let mut table = Table::new(&headers);
    for resource in resources {
        let meta = resource.metadata.clone().unwrap_or_default();
        let mut row = vec![
            meta.namespace,
            meta.name,
            meta.resource_version.to_string(),
            summary::target(resource),
        ];
        if wide {
            let mut labels: Vec<String> = meta
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            row.push(summary::details(resource));
            row.push(labels.join(","));
        }
        table.row(row);
    }
    table
}
