//! The Admin API's identity calls: join tokens (create, list, revoke) and the CA (status, rotate), over
//! [`Identity`]. Every store write runs on a blocking thread; errors name the field or the state to wait for.

use std::time::Duration;

use shoal_proto::v1;
use tonic::Status;

use super::AdminService;
use super::errors;
use crate::identity::credentials::{JoinTokenInfo, TokenError};
use crate::identity::{CaError, Identity, RootFiles};

impl AdminService {
    fn identity(&self) -> Result<Identity, Status> {
        self.inner.identity.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this control plane runs without a CA (embedded without identity); join tokens and CA rotation are unavailable",
            )
        })
    }

    pub(super) async fn create_token(
        &self,
        req: v1::CreateJoinTokenRequest,
    ) -> Result<v1::CreateJoinTokenResponse, Status> {
        let identity = self.identity()?;
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));
        let created = blocking(move || {
            identity
                .join_tokens
                .create(&req.namespace, &req.service_account, ttl, req.max_uses)
        })
        .await?
        .map_err(|e| token_status(&e))?;
        tracing::info!(id = %created.info.id, identity = %created.info.identity, expires_at = created.info.expires_at, max_uses = created.info.max_uses, "join token created");
        Ok(v1::CreateJoinTokenResponse {
            token: created.token,
            info: Some(wire(&created.info)),
        })
    }

    pub(super) async fn list_tokens(
        &self,
        req: v1::ListJoinTokensRequest,
    ) -> Result<v1::ListJoinTokensResponse, Status> {
        let identity = self.identity()?;
        let namespace = (!req.namespace.is_empty()).then_some(req.namespace);
        let tokens = blocking(move || identity.join_tokens.list(namespace.as_deref()))
            .await?
            .map_err(|e| token_status(&e))?;
        Ok(v1::ListJoinTokensResponse {
            tokens: tokens.iter().map(wire).collect(),
        })
    }

    pub(super) async fn revoke_token(
        &self,
        req: v1::RevokeJoinTokenRequest,
    ) -> Result<v1::RevokeJoinTokenResponse, Status> {
        let identity = self.identity()?;
        let info = blocking(move || identity.join_tokens.revoke(&req.id))
            .await?
            .map_err(|e| token_status(&e))?;
        tracing::info!(id = %info.id, identity = %info.identity, "join token revoked");
        Ok(v1::RevokeJoinTokenResponse {
            info: Some(wire(&info)),
        })
    }

    pub(super) async fn rotate(
        &self,
        req: v1::RotateCaRequest,
    ) -> Result<v1::RotateCaResponse, Status> {
        let identity = self.identity()?;
        let root = match (
            req.root_certificate_pem.trim().is_empty(),
            req.root_private_key_pem.trim().is_empty(),
        ) {
            (true, true) => None,
            (false, false) => Some(RootFiles {
                cert_pem: req.root_certificate_pem,
                key_pem: req.root_private_key_pem,
            }),
            (false, true) => {
                return Err(errors::bad_field(
                    "root_private_key_pem",
                    "required with root_certificate_pem: the root's PKCS#8 private key",
                ));
            }
            (true, false) => {
                return Err(errors::bad_field(
                    "root_certificate_pem",
                    "required with root_private_key_pem: the root certificate",
                ));
            }
        };
        let activate_after = (req.activate_after_seconds > 0)
            .then(|| Duration::from_secs(req.activate_after_seconds));
        let status = blocking(move || identity.ca.rotate(root, activate_after))
            .await?
            .map_err(|e| ca_status(&e))?;
        Ok(v1::RotateCaResponse {
            status: Some(status),
        })
    }

    pub(super) fn ca_state(&self) -> Result<v1::CaStatusResponse, Status> {
        Ok(self.identity()?.ca.status())
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| errors::join(&e))
}

fn token_status(error: &TokenError) -> Status {
    match error {
        TokenError::Invalid(message) => Status::invalid_argument(message.clone()),
        TokenError::NotFound(_) => Status::not_found(error.to_string()),
        TokenError::Store(e) => errors::from_store(e),
        TokenError::Corrupt { .. } => Status::internal(error.to_string()),
        TokenError::Shared(_) => Status::unavailable(error.to_string()),
    }
}

fn ca_status(error: &CaError) -> Status {
    match error {
        CaError::Invalid(_) => Status::invalid_argument(error.to_string()),
        CaError::RotationInProgress { .. } => Status::failed_precondition(error.to_string()),
        CaError::Store(e) => errors::from_store(e),
        _ => Status::internal(error.to_string()),
    }
}

fn wire(info: &JoinTokenInfo) -> v1::JoinTokenInfo {
    v1::JoinTokenInfo {
        id: info.id.clone(),
        namespace: info.identity.namespace.clone(),
        service_account: info.identity.service_account.clone(),
        created_at_unix_seconds: info.created_at,
        expires_at_unix_seconds: info.expires_at,
        max_uses: info.max_uses,
        uses: info.uses,
        revoked: info.revoked,
    }
}
