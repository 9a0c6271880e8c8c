//! Per-identity certificates for the pods on this node: issued on first use, refreshed at
//! half-life in the background, the old one kept in service until the new one is in hand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use super::{CaError, Identity, LocalCa, WorkloadCert};

/// The live certificate of one identity. TLS configs hold the slot, not the certificate, so a
/// refresh takes effect on the next handshake without rebuilding anything.
pub struct CertSlot {
    identity: Identity,
    current: RwLock<Arc<Issued>>,
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
}

impl CertSlot {
    fn new(cert: WorkloadCert) -> Result<Arc<CertSlot>, CaError> {
        let identity = cert.identity.clone();
        Ok(Arc::new(CertSlot {
            identity,
            current: RwLock::new(Arc::new(Issued::new(cert)?)),
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
        CertInfo {
            identity: self.identity.clone(),
            not_before: cur.cert.not_before,
            not_after: cur.cert.not_after,
        }
    }

    fn read(&self) -> Arc<Issued> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

pub struct CertManager {
    ca: Arc<LocalCa>,
    ttl: Duration,
    slots: Mutex<HashMap<Identity, Weak<CertSlot>>>,
}

impl CertManager {
    pub fn new(ca: Arc<LocalCa>, ttl: Duration) -> Arc<CertManager> {
        Arc::new(CertManager {
            ca,
            ttl,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate slot for `id`, issuing one if no live holder has it. Holders keep the
    /// slot alive; when the last one drops, refreshing stops and the key is forgotten.
    pub fn get(self: &Arc<Self>, id: &Identity) -> Result<Arc<CertSlot>, CaError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(id).and_then(Weak::upgrade) {
            return Ok(slot);
        }
        let slot = CertSlot::new(self.ca.issue(id, self.ttl)?)?;
        slots.retain(|_, w| w.strong_count() > 0);
        slots.insert(id.clone(), Arc::downgrade(&slot));
        tracing::info!(identity = %id, ttl = ?self.ttl, "issued workload certificate");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(self.clone(), Arc::downgrade(&slot)));
        }
        Ok(slot)
    }

    /// Certificates currently held by some pod proxy.
    pub fn certificates(&self) -> Vec<CertInfo> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<CertInfo> = slots
            .values()
            .filter_map(Weak::upgrade)
            .map(|s| s.info())
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    pub fn ca(&self) -> &LocalCa {
        &self.ca
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
        match mgr
            .ca
            .issue(&s.identity, mgr.ttl)
            .and_then(|c| s.replace(c))
        {
            Ok(()) => {
                retry = Duration::from_millis(500);
                tracing::info!(identity = %s.identity, "refreshed workload certificate");
            }
            Err(e) => {
                // Keep serving the old certificate; it is still valid for the other half-life.
                tracing::warn!(identity = %s.identity, error = %e, "certificate refresh failed, retrying");
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
