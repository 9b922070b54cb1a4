//! The connection to the control plane's Admin API.

use std::time::Duration;

use shoal_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use super::error::{CliError, root_cause};

/// How long to try to connect before reporting the control plane unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of each call; writes wait for the store's fsync, which takes milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An Admin client connected to `server` (`http://host:port`, or `host:port`).
pub(crate) async fn connect(server: &str) -> Result<AdminClient<Channel>, CliError> {
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let endpoint = Endpoint::from_shared(url).map_err(|e| {
        CliError::Input(format!(
            "--server {server:?} is not an address such as http://127.0.0.1:15011 ({e})"
        ))
    })?;
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    match endpoint.connect().await {
        // Answers come from the operator's own control plane: a listing of many resources, or one large
        // resource echoed back by `apply`, may pass gRPC's default 4 MiB.
        Ok(channel) => Ok(AdminClient::new(channel).max_decoding_message_size(usize::MAX)),
        Err(error) => Err(CliError::Unreachable {
            server: server.to_owned(),
            cause: root_cause(&error),
        }),
    }
}
