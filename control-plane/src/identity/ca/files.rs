//! The operator's root (SHOAL_CP_CA_CERT_FILE + SHOAL_CP_CA_KEY_FILE): read at start-up; a key file that
//! group or others can read is refused, since whoever reads it can mint identities for the whole mesh.

use std::path::Path;

use super::CaError;

/// A root certificate and its private key, as PEM text. `Debug` never prints the key.
#[derive(Clone)]
pub struct RootFiles {
    /// The root certificate, PEM.
    pub cert_pem: String,
    /// Its PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for RootFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootFiles")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

impl RootFiles {
    /// Reads both files; the key file must not be readable by group or others.
    pub fn read(cert: &Path, key: &Path) -> Result<Self, CaError> {
        let file = |path: &Path, reason: String| CaError::File {
            path: path.to_owned(),
            reason,
        };
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| file(cert, e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(key).map_err(|e| file(key, e.to_string()))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(file(
                    key,
                    format!(
                        "the CA private key is readable by group or others (mode {mode:04o}); run `chmod 600` on it"
                    ),
                ));
            }
        }
        let key_pem = std::fs::read_to_string(key).map_err(|e| file(key, e.to_string()))?;
        Ok(Self { cert_pem, key_pem })
    }
}
