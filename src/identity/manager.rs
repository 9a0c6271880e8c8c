//! Per-identity certificates for the pods on this node: issued on first use, refreshed at
//! half-life in the background, the old one kept in service until the new one is in hand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use super::{CaError, Identity, IstioCa, LocalCa, WorkloadCert};

/// The live certificate of one identity. TLS configs hold the slot, not the certificate, so a
/// refresh takes effect on the next handshake without rebuilding anything.
pub struct CertSlot {
    identity: Identity,
    current: RwLock<Arc<Issued>>,
    /// The last refresh failure (when, why); cleared by the next success.
    last_error: Mutex<Option<(SystemTime, String)>>,
}

struct Issued {
    cert: WorkloadCert,
    key: Arc<CertifiedKey>,
}

/// What the admin API shows of a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Subject of the certificate that signed the leaf.
    pub issuer: String,
    /// Certificates presented after the leaf.
    pub chain_len: usize,
    pub refresh_at: SystemTime,
    /// The last refresh failure, if the last attempt failed.
    pub last_error: Option<(SystemTime, String)>,
}

impl CertSlot {
    fn new(cert: WorkloadCert) -> Result<Arc<CertSlot>, CaError> {
        let identity = cert.identity.clone();
        Ok(Arc::new(CertSlot {
            identity,
            current: RwLock::new(Arc::new(Issued::new(cert)?)),
            last_error: Mutex::new(None),
        }))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.read().key.clone()
    }

    pub fn info(&self) -> CertInfo {
        let cur = self.read();
        let issuer = x509_parser::parse_x509_certificate(&cur.cert.chain[0])
            .map(|(_, c)| c.issuer().to_string())
            .unwrap_or_default();
        CertInfo {
            identity: self.identity.clone(),
            not_before: cur.cert.not_before,
            not_after: cur.cert.not_after,
            issuer,
            chain_len: cur.cert.chain.len() - 1,
            refresh_at: cur.cert.refresh_at(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    fn read(&self) -> Arc<Issued> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            e.map(|e| (SystemTime::now(), e));
    }

    fn replace(&self, cert: WorkloadCert) -> Result<(), CaError> {
        let issued = Arc::new(Issued::new(cert)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = issued;
        Ok(())
    }
}

impl Issued {
    fn new(cert: WorkloadCert) -> Result<Issued, CaError> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&cert.key).map_err(|e| {
            CaError::File {
                path: "<generated key>".into(),
                msg: e.to_string(),
            }
        })?;
        let key = Arc::new(CertifiedKey::new(cert.chain.clone(), signer));
        Ok(Issued { cert, key })
    }
}

/// Where certificates come from: the local CA (file mode, dev) or istiod's CA.
pub enum CertSource {
    Local(Arc<LocalCa>),
    Istio(Arc<IstioCa>),
}

impl From<Arc<LocalCa>> for CertSource {
    fn from(ca: Arc<LocalCa>) -> Self {
        CertSource::Local(ca)
    }
}

impl CertSource {
    async fn issue(&self, id: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        match self {
            CertSource::Local(ca) => ca.issue(id, ttl),
            CertSource::Istio(ca) => ca.issue(id, ttl).await,
        }
    }

    /// `local CA` or `istio CA <address>`, for logs and the admin API.
    pub fn describe(&self) -> String {
        match self {
            CertSource::Local(_) => "local CA".into(),
            CertSource::Istio(ca) => format!("istio CA {}", ca.address()),
        }
    }
}

/// How long a caller waits for a first certificate before giving up (the CA may be down; the
/// caller, e.g. a ZDS Add, fails and is retried).
const FIRST_ISSUE_TIMEOUT: Duration = Duration::from_secs(15);

type SlotEntry = Arc<tokio::sync::Mutex<Weak<CertSlot>>>;

pub struct CertManager {
    source: CertSource,
    ttl: Duration,
    /// Per identity, the live slot; the async mutex makes concurrent first requests for one
    /// identity wait for a single issuance.
    slots: Mutex<HashMap<Identity, SlotEntry>>,
}

impl CertManager {
    pub fn new(source: impl Into<CertSource>, ttl: Duration) -> Arc<CertManager> {
        Arc::new(CertManager {
            source: source.into(),
            ttl,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate slot for `id`, issuing one if no live holder has it. Holders keep the
    /// slot alive; when the last one drops, refreshing stops and the key is forgotten.
    pub async fn get(self: &Arc<Self>, id: &Identity) -> Result<Arc<CertSlot>, CaError> {
        let entry = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|_, e| e.try_lock().map_or(true, |w| w.strong_count() > 0));
            slots.entry(id.clone()).or_default().clone()
        };
        let mut live = entry.lock().await;
        if let Some(slot) = live.upgrade() {
            return Ok(slot);
        }
        let cert = tokio::time::timeout(FIRST_ISSUE_TIMEOUT, self.source.issue(id, self.ttl))
            .await
            .map_err(|_| CaError::Remote {
                identity: id.to_string(),
                msg: format!("no answer within {FIRST_ISSUE_TIMEOUT:?}"),
            })??;
        let slot = CertSlot::new(cert)?;
        *live = Arc::downgrade(&slot);
        tracing::info!(identity = %id, ttl = ?self.ttl, source = %self.source.describe(), "issued workload certificate");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(self.clone(), Arc::downgrade(&slot)));
        }
        Ok(slot)
    }

    /// Certificates currently held by some pod proxy (one being issued right now is left out).
    pub fn certificates(&self) -> Vec<CertInfo> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<CertInfo> = slots
            .values()
            .filter_map(|e| e.try_lock().ok()?.upgrade())
            .map(|s| s.info())
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    pub fn source(&self) -> &CertSource {
        &self.source
    }
}

async fn refresh_loop(mgr: Arc<CertManager>, slot: Weak<CertSlot>) {
    let mut retry = Duration::from_millis(500);
    loop {
        let wait = match slot.upgrade() {
            Some(s) => s
                .read()
                .cert
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => return,
        };
        tokio::time::sleep(wait).await;
        let Some(s) = slot.upgrade() else { return };
        let id = s.identity.clone();
        // Not holding the slot while the CA answers: a pod gone meanwhile stops the refresh.
        drop(s);
        let issued = mgr.source.issue(&id, mgr.ttl).await;
        let Some(s) = slot.upgrade() else { return };
        match issued.and_then(|c| s.replace(c)) {
            Ok(()) => {
                retry = Duration::from_millis(500);
                s.set_error(None);
                tracing::info!(identity = %id, source = %mgr.source.describe(), "refreshed workload certificate");
            }
            Err(e) => {
                // Keep serving the old certificate; it is still valid for the other half-life.
                tracing::warn!(identity = %id, error = %e, retry_in = ?retry, "certificate refresh failed; the old certificate stays in use");
                s.set_error(Some(e.to_string()));
                drop(s);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
impl CertSlot {
    pub(super) fn for_test(cert: WorkloadCert) -> Arc<CertSlot> {
        CertSlot::new(cert).expect("test certificate")
    }
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSlot")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}
