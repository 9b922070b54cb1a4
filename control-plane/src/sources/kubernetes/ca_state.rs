//! The CA record shared by the control-plane replicas: the Secret `shoal-ca-state` in the control plane's
//! namespace (`SHOAL_CP_NAMESPACE`), one data key holding the prost-encoded CA record (private keys: it is never
//! logged). Writes carry the `resourceVersion` read (`update`), or create the Secret; the API server answers a
//! stale one, or an existing name, `409 Conflict`, which the CA turns into a re-read and a new decision
//! (`identity::ca::backend`).
//!
//! The same backend, named [`JOIN_TOKENS_SECRET`], holds the join tokens every replica shares
//! ([`SecretBackend::join_tokens`]): only hashes of their secrets, never a usable token.
//!
//! The CA's steps are synchronous and run on blocking threads: each call here enters the runtime with
//! [`Handle::block_on`], bounded by `CALL_TIMEOUT`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::runtime::Handle;

use crate::identity::ca::{CaError, RecordBackend, Stored, WriteError};

/// The Secret's name (the chart's Role grants exactly this one).
pub const SECRET_NAME: &str = "shoal-ca-state";
/// The data key holding the record.
pub const DATA_KEY: &str = "ca-record";
/// The Secret holding the shared join tokens (the chart's Role grants exactly this one too).
pub const JOIN_TOKENS_SECRET: &str = "shoal-join-tokens";
/// Its data key.
pub const JOIN_TOKENS_KEY: &str = "join-tokens";
/// The longest one call to the API server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A record in one data key of one Secret: the CA record in [`SECRET_NAME`], or the join tokens in
/// [`JOIN_TOKENS_SECRET`].
pub struct SecretBackend {
    api: Api<Secret>,
    namespace: String,
    name: &'static str,
    data_key: &'static str,
    /// What to do about a Secret without the data key, for the message.
    when_missing: &'static str,
    runtime: Handle,
    start_deadline: Duration,
}

impl SecretBackend {
    /// The Secret in `namespace`, reached with `client`; calls run on `runtime`; start-up keeps trying for
    /// `start_deadline` (`SHOAL_CP_CA_STATE_TIMEOUT`).
    pub fn new(client: Client, namespace: &str, runtime: Handle, start_deadline: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: SECRET_NAME,
            data_key: DATA_KEY,
            when_missing: "delete it to start a new CA, or restore it",
            runtime,
            start_deadline,
        }
    }

    /// The join tokens shared by the replicas: the Secret [`JOIN_TOKENS_SECRET`] in `namespace`.
    pub fn join_tokens(client: Client, namespace: &str, runtime: Handle) -> Self {
        Self {
            name: JOIN_TOKENS_SECRET,
            data_key: JOIN_TOKENS_KEY,
            when_missing: "delete it to start with no join tokens, or restore it",
            ..Self::new(client, namespace, runtime, CALL_TIMEOUT)
        }
    }

    fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, CaError> {
        let timeout = CALL_TIMEOUT.min(self.start_deadline);
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, call).await })
            .map_err(|_| {
                CaError::Backend(format!(
                    "cannot {what} {}: the API server did not answer within {timeout:?}",
                    self.describe()
                ))
            })
    }

    fn failed(&self, what: &str, error: kube::Error) -> CaError {
        let hint = match &error {
            kube::Error::Api(status) if status.code == 403 => {
                " (the control plane's Role needs get and update on this Secret, and create on secrets: the chart's rbac.yaml)"
            }
            _ => "",
        };
        CaError::Backend(format!("cannot {what} {}: {error}{hint}", self.describe()))
    }
}

impl RecordBackend for SecretBackend {
    fn describe(&self) -> String {
        format!("the Secret {}/{}", self.namespace, self.name)
    }

    fn shared(&self) -> bool {
        true
    }

    fn start_deadline(&self) -> Duration {
        self.start_deadline
    }

    fn read(&self) -> Result<Option<Stored>, CaError> {
        let secret = self
            .call("read", self.api.get_opt(self.name))?
            .map_err(|e| self.failed("read", e))?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        let version = secret.metadata.resource_version.unwrap_or_default();
        let bytes = (secret.data.unwrap_or_default())
            .remove(self.data_key)
            .ok_or_else(|| {
                CaError::Corrupt(format!(
                    "{} has no data key {}; {}",
                    self.describe(),
                    self.data_key,
                    self.when_missing
                ))
            })?;
        Ok(Some(Stored {
            bytes: bytes.0,
            version,
        }))
    }

    fn write(&self, expected: Option<&str>, bytes: Vec<u8>) -> Result<String, WriteError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_owned()),
                resource_version: expected.map(str::to_owned),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "shoal-control-plane".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(
                self.data_key.to_owned(),
                ByteString(bytes),
            )])),
            ..Default::default()
        };
        let params = PostParams::default();
        let (what, answer) = match expected {
            None => (
                "create",
                self.call("create", self.api.create(&params, &secret))?,
            ),
            Some(_) => (
                "update",
                self.call("update", self.api.replace(self.name, &params, &secret))?,
            ),
        };
        match answer {
            Ok(written) => Ok(written.metadata.resource_version.unwrap_or_default()),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(WriteError::Conflict),
            Err(error) => Err(WriteError::Failed(self.failed(what, error))),
        }
    }
}
