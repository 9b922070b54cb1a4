//! `shoalctl inject -f FILE|-`: the sidecar injector's mutation applied offline to Kubernetes manifests, for
//! clusters without the webhook or to see what it would do. Every document of the YAML stream is written to
//! stdout: the pod templates of Pods, Deployments, StatefulSets, DaemonSets, Jobs and CronJobs (and of the
//! items of a `List`) with the sidecar, every other document as it was.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use shoal_proto::v1;

use super::error::CliError;
use super::{apply, client};
use crate::inject::{ControlPlaneRef, Injector, Outcome, Template, patch};

/// Runs `inject`.
pub(super) async fn run(
    server: &str,
    file: &str,
    config: Option<&Path>,
    trust_anchors: Option<&Path>,
) -> Result<(), CliError> {
    let (origin, text) = apply::read(file)?;
    let template = match config {
        None => Template::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Input(format!("--config {}: {e}", path.display())))?;
            Template::from_yaml(&text)
                .map_err(|e| CliError::Input(format!("--config {}: {e}", path.display())))?
        }
    };
    let injector = Injector::new(template, &ControlPlaneRef::default())
        .map_err(|e| CliError::Input(format!("--config: {e}")))?;
    let anchors = match trust_anchors {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| CliError::Input(format!("--trust-anchors {}: {e}", path.display())))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(CliError::Input(format!(
                    "--trust-anchors {}: no PEM certificate in it (shoalctl ca anchors prints them)",
                    path.display()
                )));
            }
            pem
        }
        None => anchors_from(server).await?,
    };
    let (out, notes) = inject_stream(&text, &injector, &anchors)
        .map_err(|e| CliError::Input(format!("{origin}: {e}")))?;
    for note in notes {
        eprintln!("{note}");
    }
    print!("{out}");
    Ok(())
}

/// The control plane's roots, as `shoalctl ca anchors` prints them.
async fn anchors_from(server: &str) -> Result<String, CliError> {
    let mut client = client::connect(server).await?;
    let status = (client.ca_status(v1::CaStatusRequest {}).await)
        .map_err(|status| CliError::from_status(server, &status))?
        .into_inner();
    Ok(status
        .roots
        .iter()
        .map(|root| format!("{}\n", root.certificate_pem.trim_end()))
        .collect())
}

/// Where a kind keeps its pod template (JSON pointer), `""` for a Pod itself; `None`: not a workload.
fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every workload of a YAML stream; returns the YAML to print and the notes for stderr (what was
/// skipped and why). A refused document fails the whole stream, naming it: half-injected output would be
/// easy to apply by mistake.
pub(crate) fn inject_stream(
    text: &str,
    injector: &Injector,
    anchors: &str,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::new();
    let mut notes = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = |e: String| format!("document {}: {e}", i + 1);
        let value = serde_yaml_ng::Value::deserialize(document).map_err(|e| at(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let mut doc: Value = serde_json::to_value(&value).map_err(|e| at(e.to_string()))?;
        let changed = inject_document(&mut doc, injector, anchors, &mut notes).map_err(at)?;
        let yaml = if changed {
            serde_yaml_ng::to_string(&doc)
        } else {
            // Untouched documents keep their key order.
            serde_yaml_ng::to_string(&value)
        };
        out.push_str("---\n");
        out.push_str(&yaml.map_err(|e| at(e.to_string()))?);
    }
    Ok((out, notes))
}

/// Injects one document (recursing into a `List`'s items); whether it changed.
fn inject_document(
    doc: &mut Value,
    injector: &Injector,
    anchors: &str,
    notes: &mut Vec<String>,
) -> Result<bool, String> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    if kind == "List" {
        let mut changed = false;
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                changed |= inject_document(item, injector, anchors, notes)?;
            }
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let subject = format!("{kind} {name}");
    let template = doc
        .pointer_mut(path)
        .filter(|t| t.is_object())
        .ok_or_else(|| format!("{subject} has no pod template at {path}"))?;
    match injector.inject(template, namespace.as_deref(), anchors) {
        Ok(Outcome::Inject(ops)) => {
            patch::apply(template, &ops).map_err(|e| format!("{subject}: {e}"))?;
            Ok(true)
        }
        Ok(Outcome::Skip { reason, warning }) => {
            notes.push(format!("{subject}: not injected: {reason}"));
            notes.extend(warning.map(|w| format!("warning: {subject}: {w}")));
            Ok(false)
        }
        Err(denied) => Err(format!("{subject}: {denied}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<(Vec<Value>, Vec<String>), String> {
        let injector = Injector::new(Template::default(), &ControlPlaneRef::default()).unwrap();
        let (out, notes) = inject_stream(text, &injector, "PEM")?;
        let docs = serde_yaml_ng::Deserializer::from_str(&out)
            .map(|d| serde_json::to_value(serde_yaml_ng::Value::deserialize(d).unwrap()).unwrap())
            .collect();
        Ok((docs, notes))
    }

    fn init_names(template: &Value) -> Vec<&str> {
        template["spec"]["initContainers"]
            .as_array()
            .map(|c| c.iter().map(|c| c["name"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }

    const SPEC: &str = "spec: {containers: [{name: app, image: app:1}]}";

    #[test]
    fn every_workload_kind_gets_its_pod_template_injected() {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n{SPEC}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec: {{template: {{{SPEC}}}}}\n---\n\
             apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec: {{template: {{{SPEC}}}}}\n---\n\
             apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: ds}}\nspec: {{template: {{{SPEC}}}}}\n---\n\
             apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec: {{template: {{{SPEC}}}}}\n---\n\
             apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: c}}\nspec: {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {{{SPEC}}}}}}}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: svc}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
             apiVersion: v1\nkind: List\nitems: [{{apiVersion: v1, kind: Pod, metadata: {{name: listed}}, {SPEC}}}]\n"
        );
        let (docs, notes) = run(&text).unwrap();
        assert_eq!(docs.len(), 8);
        assert!(notes.is_empty(), "{notes:?}");
        let expected = ["shoal-init", "shoal-proxy"];
        assert_eq!(init_names(&docs[0]), expected, "Pod");
        for (doc, kind) in docs[1..5]
            .iter()
            .zip(["Deployment", "StatefulSet", "DaemonSet", "Job"])
        {
            assert_eq!(doc["kind"], kind);
            assert_eq!(init_names(&doc["spec"]["template"]), expected, "{kind}");
        }
        assert_eq!(
            init_names(&docs[5]["spec"]["jobTemplate"]["spec"]["template"]),
            expected,
            "CronJob"
        );
        assert_eq!(
            docs[6]["spec"],
            serde_json::json!({"ports": [{"port": 80}]}),
            "unchanged"
        );
        assert_eq!(init_names(&docs[7]["items"][0]), expected, "List item");
    }

    #[test]
    fn re_injection_opt_out_and_refusals() {
        let text = format!("kind: Pod\nmetadata: {{name: p}}\n{SPEC}\n");
        let (once, _) = run(&text).unwrap();
        let again = serde_yaml_ng::to_string(&once[0]).unwrap();
        let (twice, notes) = run(&again).unwrap();
        assert_eq!(twice[0], once[0], "idempotent");
        assert_eq!(notes, ["Pod p: not injected: already injected"]);

        let opted_out = format!(
            "kind: Deployment\nmetadata: {{name: d}}\nspec: {{template: {{metadata: {{labels: {{shoal.io/inject: disabled}}}}, {SPEC}}}}}\n"
        );
        let (docs, notes) = run(&opted_out).unwrap();
        assert!(init_names(&docs[0]["spec"]["template"]).is_empty());
        assert_eq!(
            notes,
            ["Deployment d: not injected: shoal.io/inject=disabled"]
        );

        let bad = format!(
            "kind: Service\nmetadata: {{name: s}}\n---\nkind: Job\nmetadata: {{name: j}}\nspec: {{template: {{metadata: {{annotations: {{shoal.io/exclude-outbound-ports: '22,x'}}}}, {SPEC}}}}}\n"
        );
        let error = run(&bad).unwrap_err();
        assert!(
            error.starts_with("document 2: Job j: annotation shoal.io/exclude-outbound-ports"),
            "{error}"
        );

        let error = run("kind: Deployment\nmetadata: {name: d}\nspec: {}\n").unwrap_err();
        assert!(
            error.contains("no pod template at /spec/template"),
            "{error}"
        );
        assert!(run("kind: [").unwrap_err().starts_with("document 1:"));
    }
}
