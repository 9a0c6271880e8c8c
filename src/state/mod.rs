//! TEMPORARY stand-in with the agreed API; replaced by the real module on merge.
#![allow(dead_code)]
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Hbone,
    Tcp,
}
#[derive(Debug, Clone)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: Protocol,
    pub node: String,
    pub network: String,
    pub services: HashMap<String, HashMap<u16, u16>>,
}
impl Workload {
    pub fn identity(&self) -> crate::identity::Identity {
        crate::identity::Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub subject_alt_names: Vec<String>,
}
#[derive(Default)]
pub struct ConfigSnapshot {
    pub workloads: Vec<Arc<Workload>>,
}
pub enum Upstream {
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
        service: Option<Arc<Service>>,
    },
    Passthrough(SocketAddr),
}
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no endpoints for {service}")]
    NoEndpoints { service: String },
}
impl ConfigSnapshot {
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.iter().find(|w| w.workload_ips.contains(&ip))
    }
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.iter().find(|w| w.uid == uid)
    }
    pub fn resolve(
        &self,
        dst: SocketAddr,
        _pick: &mut impl FnMut(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        Ok(match self.workload_by_ip(dst.ip()) {
            Some(w) => Upstream::Workload { workload: w.clone(), addr: dst, service: None },
            None => Upstream::Passthrough(dst),
        })
    }
}
pub struct State {
    cur: RwLock<Arc<ConfigSnapshot>>,
}
impl State {
    pub fn new(s: ConfigSnapshot) -> Self {
        State { cur: RwLock::new(Arc::new(s)) }
    }
    pub fn current(&self) -> Arc<ConfigSnapshot> {
        self.cur.read().unwrap().clone()
    }
    pub fn replace(&self, s: ConfigSnapshot) {
        *self.cur.write().unwrap() = Arc::new(s);
    }
}
