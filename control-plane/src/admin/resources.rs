//! The resource calls: `Apply`, `Create`, `Replace`, `Delete`, `Get`, `List`. Writes run on blocking threads
//! because the store waits for fsync before it returns.

use shoal_proto::v1;
use tonic::Status;

use super::{AdminService, errors, metrics, request};
use crate::model::ResourceKind;
use crate::store::{self, Store, StoredResource};

impl AdminService {
    pub(super) async fn apply_resource(
        &self,
        req: v1::ApplyRequest,
    ) -> Result<v1::ApplyResponse, Status> {
        let resource = request::resource(req.resource)?;
        let kind = resource.kind();
        let applied = self
            .write(kind, "apply", move |store| {
                store.apply_outcome(resource, None)
            })
            .await?;
        // An identical re-apply still counts as a registration's heartbeat.
        self.written(&applied.stored);
        Ok(v1::ApplyResponse {
            created: !applied.unchanged && applied.stored.created(),
            resource: Some(applied.stored.resource.as_ref().into()),
            unchanged: applied.unchanged,
        })
    }

    pub(super) async fn create_resource(
        &self,
        req: v1::CreateRequest,
    ) -> Result<v1::CreateResponse, Status> {
        let resource = request::resource(req.resource)?;
        let kind = resource.kind();
        let stored = self
            .write(kind, "create", move |store| store.create(resource))
            .await?;
        self.written(&stored);
        Ok(v1::CreateResponse {
            resource: Some(stored.resource.as_ref().into()),
        })
    }

    pub(super) async fn replace_resource(
        &self,
        req: v1::ReplaceRequest,
    ) -> Result<v1::ReplaceResponse, Status> {
        let expected = req.expected_resource_version;
        if expected == 0 {
            let reason =
                "required: the version you read (Replace never creates; use Apply or Create)";
            return Err(errors::bad_field("expected_resource_version", reason));
        }
        let resource = request::resource(req.resource)?;
        let kind = resource.kind();
        let stored = self
            .write(kind, "replace", move |store| {
                store.apply(resource, Some(expected))
            })
            .await?;
        self.written(&stored);
        Ok(v1::ReplaceResponse {
            resource: Some(stored.resource.as_ref().into()),
        })
    }

    pub(super) async fn delete_resource(
        &self,
        req: v1::DeleteRequest,
    ) -> Result<v1::DeleteResponse, Status> {
        let key = request::key(req.kind, &req.namespace, &req.name)?;
        let expected = Some(req.expected_resource_version).filter(|&v| v != 0);
        let deleting = key.clone();
        let tombstone = self
            .write(key.kind, "delete", move |store| {
                store.delete(&deleting, expected)
            })
            .await?;
        self.inner.registrations.forget(&key);
        Ok(v1::DeleteResponse {
            resource: Some(tombstone.resource.as_ref().into()),
            deleted_at_version: tombstone.deleted_version,
        })
    }

    pub(super) fn get_resource(&self, req: &v1::GetRequest) -> Result<v1::GetResponse, Status> {
        let key = request::key(req.kind, &req.namespace, &req.name)?;
        match self.inner.store.get(&key) {
            Some(stored) => Ok(v1::GetResponse {
                resource: Some(stored.resource.as_ref().into()),
            }),
            None => Err(errors::from_store(&store::Error::NotFound { key })),
        }
    }

    pub(super) fn list_resources(&self, req: &v1::ListRequest) -> Result<v1::ListResponse, Status> {
        let kind = request::kind_filter(req.kind)?;
        let namespace = request::namespace_filter(&req.namespace);
        let listing = self.inner.store.list(kind, namespace);
        let labelled = |stored: &&StoredResource| {
            let labels = &stored.resource.metadata.labels;
            (req.match_labels.iter()).all(|(k, v)| labels.get(k) == Some(v))
        };
        Ok(v1::ListResponse {
            resources: (listing.resources.iter())
                .filter(labelled)
                .map(|stored| stored.resource.as_ref().into())
                .collect(),
            version: listing.revision,
        })
    }

    /// Runs one store write on a blocking thread, counts it, and maps its error to a status.
    async fn write<T: Send + 'static>(
        &self,
        kind: ResourceKind,
        op: &'static str,
        write: impl FnOnce(&Store) -> store::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        // In Kubernetes mode the custom resources are the source of truth: one place to write policies.
        // Registrations stay (workloads outside the cluster register and heartbeat here).
        if self
            .inner
            .kubernetes_policies
            .load(std::sync::atomic::Ordering::Relaxed)
            && kind != ResourceKind::EndpointRegistration
        {
            return Err(Status::failed_precondition(format!(
                "{op} {kind}: this control plane reads its policies from Kubernetes (SHOAL_CP_KUBERNETES=true); \
                 use kubectl with the shoal.io/v1alpha1 custom resources (docs/kubernetes.md, \
                 \"Policy as custom resources\")"
            )));
        }
        let store = self.inner.store.clone();
        let result = tokio::task::spawn_blocking(move || write(&store))
            .await
            .map_err(|e| errors::join(&e))?;
        let outcome = result.as_ref().map_or_else(errors::write_result, |_| "ok");
        metrics::store_write(kind, op, outcome);
        result.map_err(|e| errors::from_store(&e))
    }

    /// Starts (or restarts) the ttl of a registration that was just written: a write counts as a heartbeat.
    fn written(&self, stored: &StoredResource) {
        self.inner.registrations.track(stored);
    }
}
