//! The public trust anchors file, `$SHOAL_CP_DATA_DIR/trust-anchors.pem`: the trust bundle's roots (PEM,
//! active first), for proxies to verify the discovery listener before their first certificate
//! (`SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE`). Written at start-up and on every bundle change, each time
//! to a temporary file renamed over the old one, so a reader never sees half a bundle. Roots are public:
//! nothing secret is ever written here.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use super::Identity;

/// The file's name inside the data directory.
pub const FILE: &str = "trust-anchors.pem";

/// The anchors file of the data directory `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Writes `roots_pem` to `path` atomically (temporary file + rename).
pub fn write(path: &Path, roots_pem: &[String]) -> std::io::Result<()> {
    let mut text = String::new();
    for root in roots_pem {
        text.push_str(root.trim_end());
        text.push('\n');
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Rewrites the anchors file on every trust-bundle change until `closing` turns true.
pub async fn follow(identity: Identity, path: PathBuf, mut closing: watch::Receiver<bool>) {
    let mut roots = identity.ca.bundle();
    roots.borrow_and_update();
    loop {
        tokio::select! {
            changed = roots.changed() => if changed.is_err() { return },
            _ = closing.wait_for(|c| *c) => return,
        }
        let current = roots.borrow_and_update().clone();
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write(&target, &current)).await;
        match written {
            Ok(Ok(())) => tracing::info!(path = %path.display(), "trust anchors file updated"),
            Ok(Err(error)) => {
                tracing::warn!(path = %path.display(), %error, "cannot update the trust anchors file")
            }
            Err(error) => tracing::warn!(%error, "trust anchors file task failed"),
        }
    }
}
