//! `helm template` of the chart, for tests that check what it renders.

use serde_json::Value;

/// `helm template shoal charts/shoal --namespace shoal-system` with `args`: the text and its documents. helm
/// must be installed (`.ci/run` installs it; `HELM` names another binary): a missing helm fails the test.
pub fn template(args: &[&str]) -> (String, Vec<Value>) {
    let chart = crate::proxy::workspace_root().join("charts/shoal");
    let out = std::process::Command::new(std::env::var("HELM").unwrap_or_else(|_| "helm".into()))
        .args(["template", "shoal"])
        .arg(&chart)
        .args(["--namespace", "shoal-system"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm ({e}): install it as .ci/run does"));
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm's output is UTF-8");
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|doc: &Value| doc.is_object())
        .collect();
    (text, docs)
}
