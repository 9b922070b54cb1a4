//! Credentials from PEM files, re-read when they change (an external CA rotating them).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::{Identity, Material, Source, parse_certs};

/// How often the files are checked for changes.
const POLL: Duration = Duration::from_secs(2);

/// Reads a certificate chain, its key and a trust bundle; errors name the file and the problem.
pub(super) fn read(cert: &Path, key: &Path, bundle: &Path) -> Result<Material, String> {
    let load = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let chain = parse_certs(&load(cert)?, &cert.display().to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&load(key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let roots = parse_certs(&load(bundle)?, &bundle.display().to_string())?;
    Ok(Material {
        chain,
        chain_pem: Vec::new(),
        key,
        roots,
    })
}

fn modified(paths: [&Path; 3]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Re-reads the files when one of them changes; a bad set is logged and the current kept.
pub(super) async fn watch(identity: Arc<Identity>) {
    let Source::Files {
        cert,
        key,
        trust_bundle,
    } = identity.cfg.source.clone()
    else {
        return;
    };
    let paths = [cert.as_path(), key.as_path(), trust_bundle.as_path()];
    let mut seen = modified(paths);
    loop {
        tokio::time::sleep(POLL).await;
        let now = modified(paths);
        if now == seen {
            continue;
        }
        seen = now;
        match read(&cert, &key, &trust_bundle).and_then(|m| identity.install(m)) {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "identity files changed: new certificate in use")
            }
            Err(e) => {
                identity.failed(&e);
                tracing::warn!(error = %e, "identity files changed but cannot be used; keeping the current certificate");
            }
        }
    }
}
