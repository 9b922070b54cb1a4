//! The `Accepted` condition written back to each policy object with the status subresource (a JSON merge
//! patch of `status`):
//!
//! - a Shoal custom resource: `status.observedGeneration` and `status.conditions: [Accepted]` (reason
//!   `Accepted`, or `Invalid` with the message naming the field);
//! - a Gateway API route: its entries of `status.parents` for the Services it names, with
//!   `controllerName: shoal.io/mesh` (reason `Accepted`, `UnsupportedValue` naming the field, or `Conflicted`);
//!   other controllers' entries are written back as they were.
//!
//! A patch is written only when the object's status differs from the wanted one (ignoring
//! `lastTransitionTime`, which changes only when the condition's status does), so replicas evaluating the same
//! objects write each change once between them, and a status write (whose own watch event re-runs
//! evaluation) never loops.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ObjId, WATCHED, Watched};
use crate::sources::kubernetes::cluster::Table;

/// The `controllerName` of Shoal's entries in a Gateway API route's `status.parents`.
pub(crate) const CONTROLLER: &str = "shoal.io/mesh";

/// The `Accepted` condition wanted for an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Condition {
    accepted: bool,
    reason: String,
    message: String,
    observed_generation: i64,
}

impl Condition {
    /// `Accepted=True`, reason `Accepted`.
    pub(crate) fn accepted(generation: i64, message: &str) -> Self {
        Self {
            accepted: true,
            reason: "Accepted".to_owned(),
            message: message.to_owned(),
            observed_generation: generation,
        }
    }

    /// `Accepted=False` with `reason` and `message` (which names the field).
    pub(crate) fn refused(generation: i64, reason: &str, message: String) -> Self {
        Self {
            accepted: false,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
        }
    }

    fn status(&self) -> &'static str {
        if self.accepted { "True" } else { "False" }
    }

    /// Whether `current` (a condition object) says the same, `lastTransitionTime` aside.
    fn matches(&self, current: &Value) -> bool {
        current["type"] == "Accepted"
            && current["status"] == self.status()
            && current["reason"] == self.reason.as_str()
            && current["message"] == self.message.as_str()
            && current["observedGeneration"].as_i64() == Some(self.observed_generation)
    }

    /// The condition object; `lastTransitionTime` kept from `current` when the status is the same.
    fn to_json(&self, current: Option<&Value>) -> Value {
        let since = current
            .filter(|c| c["status"] == self.status())
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(|| humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        json!({
            "type": "Accepted",
            "status": self.status(),
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": since,
        })
    }
}

/// The `Accepted` condition in a list of conditions.
fn accepted_in(conditions: &Value) -> Option<&Value> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")
}

/// One status write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusPatch {
    /// The object.
    pub(crate) id: ObjId,
    /// The merge patch.
    pub(crate) body: Value,
    /// What it says, to tell a repeated patch.
    wanted: Vec<Condition>,
    /// Whether the object's status already says it.
    current: bool,
}

impl StatusPatch {
    /// The status of a Shoal custom resource.
    pub(crate) fn crd(
        index: usize,
        namespace: &str,
        name: &str,
        status: &Value,
        condition: Condition,
    ) -> Self {
        let current = accepted_in(&status["conditions"]);
        let body = json!({"status": {
            "observedGeneration": condition.observed_generation,
            "conditions": [condition.to_json(current)],
        }});
        Self {
            id: (index, (namespace.to_owned(), name.to_owned())),
            current: current.is_some_and(|c| condition.matches(c))
                && status["observedGeneration"].as_i64() == Some(condition.observed_generation),
            wanted: vec![condition],
            body,
        }
    }

    /// The status of a Gateway API route: one entry of `status.parents` per `(parentRef, condition)`.
    pub(crate) fn gateway(
        index: usize,
        namespace: &str,
        name: &str,
        status: &Value,
        parents: Vec<(Value, Condition)>,
    ) -> Self {
        let empty = Vec::new();
        let existing = status["parents"].as_array().unwrap_or(&empty);
        let ours = |p: &&Value| p["controllerName"] == CONTROLLER;
        let mut entries: Vec<Value> = existing.iter().filter(|p| !ours(p)).cloned().collect();
        let mine: Vec<&Value> = existing.iter().filter(ours).collect();
        let mut current = mine.len() == parents.len();
        for (i, (parent_ref, condition)) in parents.iter().enumerate() {
            let before = mine
                .iter()
                .find(|p| p["parentRef"] == *parent_ref)
                .and_then(|p| accepted_in(&p["conditions"]));
            current &= mine.get(i).is_some_and(|p| p["parentRef"] == *parent_ref)
                && before.is_some_and(|c| condition.matches(c));
            entries.push(json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER,
                "conditions": [condition.to_json(before)],
            }));
        }
        Self {
            id: (index, (namespace.to_owned(), name.to_owned())),
            body: json!({"status": {"parents": entries}}),
            wanted: parents.into_iter().map(|(_, c)| c).collect(),
            current,
        }
    }
}

/// The patches sent and not yet seen in a watch event, by object.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    sent: HashMap<ObjId, Vec<Condition>>,
}

impl Sent {
    /// The patches worth writing: not said by the object's status already, nor sent already.
    pub(crate) fn filter(
        &mut self,
        tables: &[Table<Watched>; 10],
        patches: Vec<StatusPatch>,
    ) -> Vec<StatusPatch> {
        // Objects gone: forget them.
        self.sent
            .retain(|(index, key), _| tables[*index].get(key).is_some());
        let mut out = Vec::new();
        for patch in patches {
            if patch.current {
                self.sent.remove(&patch.id);
                continue;
            }
            if self.sent.get(&patch.id) == Some(&patch.wanted) {
                continue;
            }
            self.sent.insert(patch.id.clone(), patch.wanted.clone());
            out.push(patch);
        }
        out
    }
}

/// Starts the task that writes status patches (in order, each retried a few times), until the sender is
/// dropped.
pub(crate) fn writer(client: Client) -> mpsc::UnboundedSender<StatusPatch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<StatusPatch>();
    tokio::spawn(async move {
        while let Some(patch) = rx.recv().await {
            write(&client, &patch).await;
        }
    });
    tx
}

async fn write(client: &Client, patch: &StatusPatch) {
    let (index, (namespace, name)) = &patch.id;
    let kind = &WATCHED[*index];
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        let result = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch.body))
            .await;
        match result {
            Ok(_) => {
                metrics::counter!("shoal_cp_kubernetes_status_writes_total", "kind" => kind.label, "result" => "ok")
                    .increment(1);
                tracing::debug!(kind = kind.label, namespace, name, "status written");
                return;
            }
            // Deleted meanwhile: nothing to write to.
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(error) => {
                metrics::counter!("shoal_cp_kubernetes_status_writes_total", "kind" => kind.label, "result" => "error")
                    .increment(1);
                tracing::warn!(kind = kind.label, namespace, name, attempt, %error, "cannot write the status");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}
