//! The CA's I/O shell: loads or creates the CA state in the store (or reads the user's issuer
//! files), writes the trust bundle file, keeps join tokens, and swaps in a new [`Authority`]
//! after each rotation step. Everything it decides is in the pure modules. The store is either
//! backend ([`CaBackend`]): replicas on etcd share one CA, the first to start creates it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::authority::{Authority, CaError, Issued};
use super::bundle::{rfc3339, TrustBundle};
use super::join::{JoinError, JoinToken, TokenRecord};
use super::spiffe::SpiffeId;
use super::state::CaState;
use super::{CaOptions, RotationStep};
use crate::backend::CaBackend;
use crate::store::{self, StoreError};

const STATE_KEY: &str = "state";
/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The CA cannot start or act.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Certificates or keys are wrong, or a step does not apply.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store's CA is for another trust domain.
    #[error("the store's CA is for trust domain `{stored}`, not `{wanted}` (use another --data-dir, or the old --trust-domain)")]
    TrustDomain {
        /// In the store.
        stored: String,
        /// Asked for.
        wanted: String,
    },
    /// Rotation of a CA whose issuer is the user's.
    #[error("the issuer is the user's (--issuer-cert): rotate by changing --issuer-cert/--issuer-key/--trust-bundle and restarting")]
    External,
    /// A bad request value.
    #[error("{0}")]
    Invalid(String),
    /// A join token was refused.
    #[error(transparent)]
    Join(#[from] JoinError),
}

fn read(path: &Path) -> Result<String, ServiceError> {
    std::fs::read_to_string(path).map_err(|source| ServiceError::File {
        path: path.to_owned(),
        source,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The control's certificate authority.
#[derive(Debug)]
pub struct Ca {
    store: Arc<dyn CaBackend>,
    /// True when the control made (and stores) its root and issuer.
    managed: bool,
    authority: ArcSwap<Authority>,
    bundle_file: PathBuf,
    /// Bumped after each change of issuer or bundle (the serving TLS follows it).
    changes: watch::Sender<u64>,
}

impl Ca {
    /// Opens the CA: the user's issuer when `options.issuer` is set, else the stored CA, made
    /// on first start. Writes the bundle to `DATA_DIR/trust-bundle.pem`.
    pub fn open(
        store: Arc<dyn CaBackend>,
        options: &CaOptions,
        data_dir: &Path,
    ) -> Result<Arc<Self>, ServiceError> {
        let (authority, managed) = match &options.issuer {
            Some(files) => {
                let chain = read(&files.cert)?;
                let key = read(&files.key)?;
                let bundle = match &files.trust_bundle {
                    Some(path) => TrustBundle::from_pem(&read(path)?),
                    None => TrustBundle::from_pem(&self_signed_in(&chain)),
                }
                .map_err(|e| {
                    ServiceError::Invalid(format!(
                        "{e} (give --trust-bundle, or put the root after the issuer in --issuer-cert)"
                    ))
                })?;
                let authority = Authority::new(
                    &options.trust_domain,
                    bundle,
                    &chain,
                    &key,
                    options.cert_ttl,
                )?;
                (authority, false)
            }
            None => {
                let state = load_or_create(store.as_ref(), &options.trust_domain)?;
                (Authority::from_state(&state, options.cert_ttl)?, true)
            }
        };
        let ca = Arc::new(Self {
            store,
            managed,
            authority: ArcSwap::from_pointee(authority),
            bundle_file: data_dir.join("trust-bundle.pem"),
            changes: watch::channel(0).0,
        });
        ca.write_bundle_file()?;
        metrics::describe_counter!(
            "strait_control_certificates_issued_total",
            "Certificates issued for CSRs, by how the caller authenticated (join-token or certificate)."
        );
        Ok(ca)
    }

    /// The current authority.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority.load_full()
    }

    /// Where the bundle file is.
    pub fn bundle_file(&self) -> &Path {
        &self.bundle_file
    }

    /// Changes of issuer or bundle.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn write_bundle_file(&self) -> Result<(), ServiceError> {
        let file_error = |source| ServiceError::File {
            path: self.bundle_file.clone(),
            source,
        };
        let tmp = self.bundle_file.with_extension("pem.tmp");
        std::fs::write(&tmp, self.authority().bundle().pem()).map_err(file_error)?;
        std::fs::rename(&tmp, &self.bundle_file).map_err(file_error)
    }

    /// Issues a leaf for `csr_pem`, which must ask for exactly `allowed`.
    pub fn issue(&self, csr_pem: &str, allowed: &SpiffeId) -> Result<Issued, CaError> {
        self.authority()
            .issue(csr_pem, allowed, OffsetDateTime::now_utc())
    }

    /// Makes a join token for one identity, valid for `ttl`; returns it and its expiry (unix s).
    pub fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<(JoinToken, SpiffeId, u64), ServiceError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(ServiceError::Invalid(format!(
                "ttl: more than 0s and at most {}h",
                MAX_TOKEN_TTL.as_secs() / 3600
            )));
        }
        let authority = self.authority();
        let identity = SpiffeId::new(authority.trust_domain(), namespace, service_account)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let now = unix_now();
        let expires_at = now + ttl.as_secs();
        let (token, record) = JoinToken::mint(&identity, expires_at, &authority.bundle().sha256())?;
        self.store
            .put_token(token.id(), &store::encode(&record)?, expires_at)?;
        Ok((token, identity, expires_at))
    }

    /// The identity a presented join token grants.
    pub fn redeem(&self, text: &str) -> Result<SpiffeId, ServiceError> {
        let token = JoinToken::parse(text)?;
        let bytes = self.store.token(token.id())?.ok_or(JoinError::Unknown)?;
        let record: TokenRecord = decode(token.id(), &bytes)?;
        Ok(token.check(&record, self.authority().trust_domain(), unix_now())?)
    }

    /// Applies one rotation step to the stored CA and starts using the result.
    pub fn rotate(&self, step: RotationStep) -> Result<Value, ServiceError> {
        if !self.managed {
            return Err(ServiceError::External);
        }
        let ttl = self.authority().ttl();
        let Some(stored) = self.store.ca_get(STATE_KEY)? else {
            return Err(ServiceError::Invalid("no CA in the store".into()));
        };
        let mut state: CaState = decode(STATE_KEY, &stored)?;
        let now = OffsetDateTime::now_utc();
        let detail = match step {
            RotationStep::AddRoot => {
                state.add_root(now)?;
                json!({"roots": state.roots.len()})
            }
            RotationStep::SwitchIssuer => {
                state.switch_issuer(now)?;
                json!({"roots": state.roots.len()})
            }
            RotationStep::RemoveOldRoots => {
                json!({"removed": state.remove_old_roots()?})
            }
        };
        // Checked before storing: a state that cannot issue is never stored.
        let authority = Authority::from_state(&state, ttl)?;
        if !self
            .store
            .ca_swap(STATE_KEY, Some(&stored), &store::encode(&state)?)?
        {
            return Err(ServiceError::Invalid(
                "the CA changed during this step (another replica rotated it): look at the status and run the step again if still needed".into(),
            ));
        }
        self.authority.store(Arc::new(authority));
        self.write_bundle_file()?;
        self.changes.send_modify(|n| *n += 1);
        tracing::info!(step = step.name(), trust_bundle = %self.bundle_file.display(), "CA rotation step applied");
        Ok(detail)
    }

    /// What `straitctl identity status` shows.
    pub fn status(&self) -> Value {
        let authority = self.authority();
        let (subject, not_after) = authority.issuer();
        json!({
            "trustDomain": authority.trust_domain(),
            "issuer": {"subject": subject, "notAfter": rfc3339(not_after)},
            "issuerSource": if self.managed { "control" } else { "user" },
            "roots": authority.bundle().describe(),
            "bundleSha256": authority.bundle().sha256(),
            "certTtlSeconds": authority.ttl().as_secs(),
            "trustBundleFile": self.bundle_file.display().to_string(),
        })
    }
}

/// The self-signed certificates of a PEM chain, as PEM.
fn self_signed_in(chain_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|der| {
            x509_parser::parse_x509_certificate(der)
                .is_ok_and(|(_, c)| c.subject() == c.issuer() && c.is_ca())
        })
        .map(|der| super::bundle::pem_certificate(&der))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.into(),
        source,
    })
}

/// The stored CA, or a new one stored unless another replica stored its own first.
fn load_or_create(store: &dyn CaBackend, trust_domain: &str) -> Result<CaState, ServiceError> {
    let state: CaState = match store.ca_get(STATE_KEY)? {
        Some(bytes) => decode(STATE_KEY, &bytes)?,
        None => {
            let state = CaState::generate(trust_domain, OffsetDateTime::now_utc())?;
            if !store.ca_swap(STATE_KEY, None, &store::encode(&state)?)? {
                // Another replica created the CA meanwhile: use that one.
                return load_or_create(store, trust_domain);
            }
            tracing::info!(trust_domain, "created the mesh's root and issuer");
            state
        }
    };
    if state.trust_domain != trust_domain {
        return Err(ServiceError::TrustDomain {
            stored: state.trust_domain,
            wanted: trust_domain.to_owned(),
        });
    }
    Ok(state)
}
