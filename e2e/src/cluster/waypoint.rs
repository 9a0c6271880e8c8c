//! A waypoint deployed as istiod's waypoint template would deploy it, running our `waypoint`
//! binary in cluster mode. istiod provisions a waypoint's ServiceAccount, Deployment and
//! Service from its injection templates; the fixture's istiod has none, so it renders nothing
//! ("no waypoint template") and this makes what the template would: the ServiceAccount, the
//! Service (selector `gateway.networking.k8s.io/gateway-name`) and one Pod, labelled
//! `istio.io/dataplane-mode: none`. No Deployment or ReplicaSet exists and the fixture's
//! controller-manager runs no deployment/replicaset controllers, so nothing adopts or deletes
//! the Pod. The process gets the environment the template's container has (downward-API
//! values supplied), a kubeconfig with its service account's token bound by
//! `manifests/waypoint.yaml`'s ClusterRole, and port forwards to istiod and the apiserver on
//! its pod's loopback (they listen on the host's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use controlplane::Forward;
use test_support::{ChildGuard, NodeId};

use super::{wait_until, Cluster, Pod, PodSpec, DATAPLANE_LABEL};
use crate::mesh::{find_binary, http_in};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Our waypoint, running as Gateway `namespace/name`'s pod.
pub struct ClusterWaypoint {
    pub pod: Arc<Pod>,
    pub log: PathBuf,
    // The process goes before the forwards it uses.
    _child: ChildGuard,
    _forwards: [Forward; 2],
}

impl ClusterWaypoint {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the waypoint's admin API (`/config_dump`, ...), in its pod.
    pub fn admin(&self, cluster: &Cluster, path: &str) -> Result<(u16, String)> {
        http_in(
            cluster.netns_of(&self.pod),
            SocketAddr::from(([127, 0, 0, 1], 15000)),
            "GET",
            path,
        )
    }
}

impl Cluster {
    /// Applies Gateway `namespace/name` (class istio-waypoint, HBONE listener on 15008) with
    /// kubectl, makes what istiod's template would for it, binds the waypoint ClusterRole to
    /// its service account, and starts our waypoint as its pod on `node`; returns once the
    /// waypoint is ready (istiod's config and the API objects in hand).
    pub fn deploy_waypoint(
        &self,
        namespace: &str,
        name: &str,
        node: NodeId,
        rust_log: &str,
    ) -> Result<ClusterWaypoint> {
        let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        self.kubectl.ok(&[
            "apply",
            "--server-side",
            "-f",
            &manifests.join("waypoint.yaml").to_string_lossy(),
        ])?;
        let binding = format!("meshtunnel-waypoint-{namespace}-{name}");
        self.kubectl.ok(&[
            "create",
            "clusterrolebinding",
            &binding,
            "--clusterrole=meshtunnel-waypoint",
            &format!("--serviceaccount={namespace}:{name}"),
        ])?;
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {namespace}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{gateway.networking.k8s.io/gateway-name: {name}, gateway.networking.k8s.io/gateway-class-name: istio-waypoint}}
spec:
  selector: {{gateway.networking.k8s.io/gateway-name: {name}}}
  ports:
  - {{name: status-port, port: 15021, protocol: TCP}}
  - {{name: mesh, port: 15008, protocol: TCP}}
"
        );
        let file = self
            .dir
            .path()
            .join(format!("waypoint-{namespace}-{name}.yaml"));
        std::fs::write(&file, yaml)?;
        self.kubectl.ok(&["apply", "-f", &file.to_string_lossy()])?;

        let mut spec = PodSpec::new(&format!("{name}-0"), node)
            .namespace(namespace)
            .label("gateway.networking.k8s.io/gateway-name", name)
            .label(
                "gateway.networking.k8s.io/gateway-class-name",
                "istio-waypoint",
            )
            .label(DATAPLANE_LABEL, "none");
        spec.service_account = name.to_owned();
        let pod = self.create_pod(&spec)?;
        self.start_waypoint(pod, namespace, name, rust_log)
    }

    fn start_waypoint(
        &self,
        pod: Arc<Pod>,
        namespace: &str,
        gateway: &str,
        rust_log: &str,
    ) -> Result<ClusterWaypoint> {
        let netns = self.netns_of(&pod);
        let cp = &self.control_plane;
        let istiod = cp.istiod().context("control plane without istiod")?.clone();
        let istiod_local: SocketAddr = super::ISTIOD_ADDR.parse()?;
        let api_addr: SocketAddr = cp
            .server()
            .trim_start_matches("https://")
            .parse()
            .context("apiserver address")?;
        let forwards = [
            Forward::start(&netns.path(), istiod_local, istiod.secure_grpc)?,
            Forward::start(&netns.path(), api_addr, api_addr)?,
        ];
        let dir = self
            .dir
            .path()
            .join(format!("waypoint-{namespace}-{gateway}"));
        std::fs::create_dir_all(&dir)?;
        let api = self.api();
        // The projected istio-token (audience istio-ca, bound to the pod) and an API token.
        let ca_token = api.token(
            namespace,
            gateway,
            &["istio-ca"],
            Some((&pod.name, &pod.uid)),
            Duration::from_secs(3600),
        )?;
        std::fs::write(dir.join("istio-token"), ca_token)?;
        let kube_token = api.token(namespace, gateway, &[], None, Duration::from_secs(3600))?;
        let kubeconfig = dir.join("kubeconfig");
        cp.write_token_kubeconfig(&kubeconfig, &kube_token)?;
        let root = self.istiod_access[0].credentials.root_cert.clone();
        let log = dir.join("waypoint.log");
        let out = std::fs::File::create(&log)?;
        let bin = find_binary("waypoint", self.opts.release_binary)?;
        let mut cmd = netns.command(bin.to_str().context("binary path")?);
        // istiod's waypoint container: `proxy waypoint ...` and its environment, plus the
        // kubeconfig a kubelet-less pod needs and the name to verify istiod's certificate
        // against (dialled at 127.0.0.1).
        let node = self.node(pod.node).name;
        cmd.env_clear()
            .args(["proxy", "waypoint", "--domain"])
            .arg(format!("{namespace}.svc.cluster.local"))
            .env("XDS_ADDRESS", format!("https://{istiod_local}"))
            .env("ALT_XDS_HOSTNAME", &istiod.hostname)
            .env("ALT_CA_HOSTNAME", &istiod.hostname)
            .env("XDS_ROOT_CA", &root)
            .env("CA_ROOT_CA", &root)
            .env("AUTH_TOKEN", dir.join("istio-token"))
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", namespace)
            .env("INSTANCE_IP", pod.ip.to_string())
            .env("SERVICE_ACCOUNT", gateway)
            .env("ISTIO_META_SERVICE_ACCOUNT", gateway)
            .env("ISTIO_META_NODE_NAME", node)
            .env("ISTIO_META_WORKLOAD_NAME", gateway)
            .env("ISTIO_META_CLUSTER_ID", &istiod.cluster_id)
            .env("CLUSTER_ID", &istiod.cluster_id)
            .env("TRUST_DOMAIN", super::TRUST_DOMAIN)
            .env("CONFIG_POLL_INTERVAL", "200ms")
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = netns.spawn_command(cmd)?;
        let wp = ClusterWaypoint {
            pod,
            log,
            _child: child,
            _forwards: forwards,
        };
        wait_until(READY_TIMEOUT, "waypoint ready", || {
            http_in(
                self.netns_of(&wp.pod),
                SocketAddr::from(([127, 0, 0, 1], 15021)),
                "GET",
                "/healthz/ready",
            )
            .is_ok_and(|(c, _)| c == 200)
        })
        .with_context(|| format!("waypoint log:\n{}", wp.logs()))?;
        Ok(wp)
    }
}
