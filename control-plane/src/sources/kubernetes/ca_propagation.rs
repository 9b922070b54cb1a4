//! The replicas' propagation reports (`identity::replicas`): while a CA root is pending, every replica writes its
//! own view under its own key of the ConfigMap `shoal-ca-propagation` (its Lease identity), every
//! [`REPORT_INTERVAL`], with a JSON merge patch of that one key, so replicas never conflict with each other; the
//! Lease holder reads the ConfigMap and judges. Once no root is pending a replica removes its key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::discovery::Hub;
use crate::identity::Identity;
use crate::identity::propagation::{self, Decision};
use crate::identity::replicas::{Replicas, Report};

/// The ConfigMap's name (the chart's Role grants exactly this one).
pub const CONFIGMAP_NAME: &str = "shoal-ca-propagation";
/// How often a replica reports while a root is pending (and the holder reads the reports).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// The longest one call to the API server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports this replica's view while a root is pending and, on the Lease holder (`leader`), reads every
/// replica's into `replicas`, until `closing` turns true.
pub async fn run(
    client: Client,
    namespace: String,
    identity: Identity,
    hub: Arc<Hub>,
    replicas: Arc<Replicas>,
    leader: watch::Receiver<bool>,
    mut closing: watch::Receiver<bool>,
) {
    let reports = Reports {
        api: Api::namespaced(client, &namespace),
        own: replicas.own().to_owned(),
    };
    let started = identity.clock.unix_seconds();
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seq, mut reported, mut failing) = (0u64, false, false);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        let view = propagation::local(&identity, &hub, started);
        let result = match &view {
            Some((pending, _, decision)) => {
                seq += 1;
                let report = Report {
                    fingerprint: pending.fingerprint.clone(),
                    propagated: matches!(decision, Decision::Propagated { .. }),
                    waiting: match decision {
                        Decision::Wait { waiting } => *waiting,
                        Decision::TimedOut { missing } => missing.len(),
                        Decision::Propagated { .. } => 0,
                    },
                    seq,
                };
                let text = serde_json::to_string(&report).unwrap_or_default();
                let written = reports.write(Some(text)).await;
                reported |= written.is_ok();
                written
            }
            None if reported => {
                let written = reports.write(None).await;
                reported = written.is_err();
                written
            }
            None => Ok(()),
        };
        let result = match result {
            Ok(()) if view.is_some() && *leader.borrow() => reports
                .read()
                .await
                .map(|data| replicas.observe(&data, Instant::now())),
            other => other,
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(
                    configmap = CONFIGMAP_NAME,
                    "CA propagation reports work again"
                );
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, configmap = CONFIGMAP_NAME, "cannot write or read the CA propagation reports; the holder does not activate a pending root before the propagation timeout while a live replica's report is missing");
            }
            Err(_) => {}
        }
    }
}

struct Reports {
    api: Api<ConfigMap>,
    own: String,
}

impl Reports {
    /// Sets (or, with `None`, removes) this replica's key; creates the ConfigMap the first time.
    async fn write(&self, report: Option<String>) -> Result<(), String> {
        let patch = Patch::Merge(json!({"data": {&self.own: report}}));
        let params = PatchParams::default();
        match timed(self.api.patch(CONFIGMAP_NAME, &params, &patch)).await? {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 && report.is_some() => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(error) => return Err(format!("cannot patch {CONFIGMAP_NAME}: {error}")),
        }
        let created = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP_NAME.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "shoal-control-plane".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                self.own.clone(),
                report.clone().unwrap_or_default(),
            )])),
            ..Default::default()
        };
        match timed(self.api.create(&PostParams::default(), &created)).await? {
            Ok(_) => Ok(()),
            // Another replica created it first: patch it.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                match timed(self.api.patch(CONFIGMAP_NAME, &params, &patch)).await? {
                    Ok(_) => Ok(()),
                    Err(error) => Err(format!("cannot patch {CONFIGMAP_NAME}: {error}")),
                }
            }
            Err(error) => Err(format!("cannot create {CONFIGMAP_NAME}: {error}")),
        }
    }

    /// Every replica's report.
    async fn read(&self) -> Result<BTreeMap<String, String>, String> {
        match timed(self.api.get_opt(CONFIGMAP_NAME)).await? {
            Ok(found) => Ok(found.and_then(|c| c.data).unwrap_or_default()),
            Err(error) => Err(format!("cannot read {CONFIGMAP_NAME}: {error}")),
        }
    }
}

async fn timed<T>(call: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| format!("the API server did not answer within {CALL_TIMEOUT:?}"))
}
