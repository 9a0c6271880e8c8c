//! A blocking client for containerd's CRI (runtime.v1) over its Unix socket, asking the way a
//! kubelet asks, so the CNI chain sees kubelet-style arguments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StatusRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The identity a kubelet gives a pod's sandbox; the CRI hands it to CNI as `K8S_POD_*`.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What PodSandboxStatus says about a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    pub ready: bool,
    pub ip: String,
    /// The sandbox's network namespace file (a bind mount the CRI made).
    pub netns: Option<PathBuf>,
    /// The pause process.
    pub pid: Option<u32>,
}

pub struct CriClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

/// Generous: the machine is shared and a CNI ADD may wait for the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

impl CriClient {
    /// Connects lazily; nothing is sent until the first call.
    pub fn new(socket: &Path) -> Result<CriClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = socket.to_owned();
        let channel = rt.block_on(async {
            // The URI is a placeholder: the connector always dials the socket.
            Endpoint::from_static("http://localhost")
                .timeout(CALL_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
        });
        Ok(CriClient { rt, channel })
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// Waits until the CRI answers and reports both RuntimeReady and NetworkReady (the latter
    /// needs a loaded CNI config).
    pub fn wait_ready(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match self.status() {
                Ok(None) => {
                    let v = self.rt.block_on(self.runtime().version(VersionRequest {
                        version: "v1".into(),
                    }))?;
                    let v = v.into_inner();
                    return Ok(format!("{} {}", v.runtime_name, v.runtime_version));
                }
                Ok(Some(why)) => last = why,
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("CRI not ready after {timeout:?}: {last}")
    }

    /// `None` when ready, else the conditions that are not.
    fn status(&self) -> Result<Option<String>> {
        let resp = self
            .rt
            .block_on(self.runtime().status(StatusRequest { verbose: false }))?
            .into_inner();
        let conditions = resp.status.map(|s| s.conditions).unwrap_or_default();
        let not_ready: Vec<String> = ["RuntimeReady", "NetworkReady"]
            .iter()
            .filter(|t| !conditions.iter().any(|c| c.r#type == **t && c.status))
            .map(|t| {
                let c = conditions.iter().find(|c| c.r#type == *t);
                format!(
                    "{t}: {} {}",
                    c.map_or("", |c| &c.reason),
                    c.map_or("", |c| &c.message)
                )
            })
            .collect();
        Ok((!not_ready.is_empty()).then(|| not_ready.join("; ")))
    }

    /// The CNI network config the CRI has loaded, as its verbose Status reports it (JSON).
    pub fn loaded_cni_config(&self) -> Result<String> {
        let resp = self
            .rt
            .block_on(self.runtime().status(StatusRequest { verbose: true }))?
            .into_inner();
        resp.info
            .get("cniconfig")
            .cloned()
            .context("the CRI's verbose Status has no cniconfig")
    }

    /// Whether the CRI's image store has `image` (it learns of imports through events).
    pub fn has_image(&self, image: &str) -> Result<bool> {
        let mut client = ImageServiceClient::new(self.channel.clone());
        let resp = self.rt.block_on(client.image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }))?;
        Ok(resp.into_inner().image.is_some())
    }

    /// RunPodSandbox with the config a kubelet sends for a plain pod; returns the sandbox id.
    pub fn run_pod_sandbox(
        &self,
        pod: &PodRef,
        log_dir: &Path,
        cgroup_parent: &str,
    ) -> Result<String> {
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                pod.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
        ]);
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_string(), "api".to_string()),
            (
                "kubernetes.io/config.seen".to_string(),
                "2026-01-01T00:00:00Z".to_string(),
            ),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            hostname: pod.name.clone(),
            log_directory: log_dir.display().to_string(),
            labels,
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.to_owned(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = self
            .rt
            .block_on(self.runtime().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .map_err(|s| {
                anyhow::anyhow!(
                    "RunPodSandbox {}/{}: {}",
                    pod.namespace,
                    pod.name,
                    s.message()
                )
            })?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    pub fn sandbox_status(&self, id: &str) -> Result<SandboxInfo> {
        let resp = self
            .rt
            .block_on(self.runtime().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))?
            .into_inner();
        let status = resp.status.context("PodSandboxStatus without a status")?;
        let info: Option<serde_json::Value> = resp
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok());
        Ok(SandboxInfo {
            ready: status.state == PodSandboxState::SandboxReady as i32,
            ip: status.network.map(|n| n.ip).unwrap_or_default(),
            netns: info.as_ref().and_then(netns_of),
            pid: info
                .as_ref()
                .and_then(|i| i.get("pid")?.as_u64())
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
        })
    }

    pub fn list_sandboxes(&self) -> Result<Vec<String>> {
        let resp = self.rt.block_on(
            self.runtime()
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )?;
        Ok(resp.into_inner().items.into_iter().map(|s| s.id).collect())
    }

    pub fn stop_sandbox(&self, id: &str) -> Result<()> {
        self.rt
            .block_on(self.runtime().stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|s| anyhow::anyhow!("StopPodSandbox {id}: {}", s.message()))?;
        Ok(())
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.rt
            .block_on(self.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox {id}: {}", s.message()))?;
        Ok(())
    }
}

/// The network namespace path in the verbose info's OCI runtime spec.
fn netns_of(info: &serde_json::Value) -> Option<PathBuf> {
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}
