//! The two halves of capturing a pod, each in the order that never blackholes traffic:
//! enrol = ztunnel first (its listeners exist once it acks), then the redirect rules;
//! unenrol = rules first (traffic goes direct again), then ztunnel.

use std::os::fd::OwnedFd;

use meshtunnel::redirect::{self, Backend, RedirectConfig};
use meshtunnel::zds::{WorkloadInfo, ZdsError, ZdsServer};

use super::netns::{fd_path, NetnsError, NetnsRef};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("ztunnel: {0}")]
    Zds(#[from] ZdsError),
    #[error("redirect rules: {0}")]
    Rules(String),
}

pub struct Mesh {
    pub zds: ZdsServer,
    pub backend: Backend,
    pub redirect: RedirectConfig,
}

impl Mesh {
    /// Hands the pod's netns to ztunnel and waits for its Ack. Even when this fails the server
    /// keeps the pod, so a ztunnel that connects later gets it in its snapshot.
    pub async fn zds_add(
        &self,
        uid: &str,
        info: WorkloadInfo,
        netns: &NetnsRef,
    ) -> Result<(), StepError> {
        let fd = OwnedFd::from(netns.reopen()?);
        self.zds.add(uid, info, fd).await?;
        Ok(())
    }

    pub async fn zds_del(&self, uid: &str) -> Result<(), ZdsError> {
        self.zds.del(uid).await
    }

    pub async fn rules_present(&self, netns: &NetnsRef) -> Result<bool, StepError> {
        let (netns, backend) = (netns.clone(), self.backend);
        blocking(move || {
            let file = netns.reopen()?;
            redirect::is_installed(&fd_path(&file), backend)
                .map_err(|e| StepError::Rules(e.to_string()))
        })
        .await
    }

    /// For a pod whose rules are already there (captured before an agent restart or upgrade):
    /// what a fresh install would add besides them, so a ztunnel upgrade resets nothing
    /// (`net.ipv4.tcp_migrate_req`). Best effort, as in install.
    pub async fn complete_capture(&self, netns: &NetnsRef) {
        let netns = netns.clone();
        let r = blocking(move || {
            let file = netns.reopen()?;
            redirect::enable_listener_migration(&fd_path(&file))
                .map_err(|e| StepError::Rules(e.to_string()))
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "a ztunnel upgrade may reset connections queued on the old listeners");
        }
    }

    pub async fn install_rules(&self, netns: &NetnsRef) -> Result<(), StepError> {
        let (netns, backend, cfg) = (netns.clone(), self.backend, self.redirect.clone());
        blocking(move || {
            let file = netns.reopen()?;
            redirect::install(&fd_path(&file), backend, &cfg)
                .map_err(|e| StepError::Rules(e.to_string()))
        })
        .await
    }

    pub async fn uninstall_rules(&self, netns: &NetnsRef) -> Result<(), StepError> {
        let (netns, backend, cfg) = (netns.clone(), self.backend, self.redirect.clone());
        blocking(move || {
            let file = netns.reopen()?;
            redirect::uninstall(&fd_path(&file), backend, &cfg)
                .map_err(|e| StepError::Rules(e.to_string()))
        })
        .await
    }
}

/// The redirect module runs `iptables-restore`/`nft`/`ip` synchronously.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StepError::Rules(format!("worker failed: {e}"))))
}
