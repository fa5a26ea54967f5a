//! An identity read from files (`certFile`, `keyFile`, `trustBundleFile`) — certificates
//! issued elsewhere (cert-manager, SPIRE) — and read again when they change: polled, a
//! change being a different size, modification time or inode of any of the three. A set that
//! does not make an identity (a half-written rotation, a key that is not the certificate's) is
//! logged and the identity in force stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Identity, IdentityError, IdentityStore};

/// The three files.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM trust bundle.
    pub trust_bundle: PathBuf,
}

/// Why the files do not make an identity.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// Which.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The files do not make an identity.
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

impl IdentityFiles {
    /// Reads the identity the files hold.
    pub fn load(&self) -> Result<Identity, FilesError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| FilesError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let (cert, key, bundle) = (
            read(&self.cert)?,
            read(&self.key)?,
            read(&self.trust_bundle)?,
        );
        Ok(Identity::from_pem(&cert, &key, &bundle)?)
    }

    /// What the files look like now: size, modification time and inode of each.
    fn stamp(&self) -> [Option<(u64, SystemTime, u64)>; 3] {
        use std::os::unix::fs::MetadataExt;
        [&self.cert, &self.key, &self.trust_bundle].map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.len(), meta.modified().ok()?, meta.ino()))
        })
    }
}

/// Installs the identity the files hold whenever they change, checking every `interval`.
pub async fn watch(files: IdentityFiles, store: Arc<IdentityStore>, interval: Duration) {
    let mut seen = files.stamp();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = files.stamp();
        if now == seen {
            continue;
        }
        // Files written one after the other settle before they are read together: a change
        // is taken once two looks agree.
        tokio::time::sleep(interval.min(Duration::from_millis(200))).await;
        if files.stamp() != now {
            continue;
        }
        seen = now;
        match files.load() {
            Ok(identity) => store.install(identity),
            Err(e) => {
                tracing::warn!(error = %e, "identity files changed but do not make an identity; keeping the one in force")
            }
        }
    }
}
