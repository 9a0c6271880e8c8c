//! Watch caches for Namespaces and this node's Pods, turning every change into a reconcile
//! trigger. The `kube` runtime watcher re-lists on 410 Gone and reconnects with backoff.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::warn;

use super::reconcile::Trigger;
use super::state::PodKey;

pub struct Caches {
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub tasks: Vec<JoinHandle<()>>,
}

pub fn start(client: &Client, node: &str, triggers: UnboundedSender<Trigger>) -> Caches {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();

    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), pod_cfg),
    )
    .default_backoff();
    let tx = triggers.clone();
    let pod_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(pod_events);
        while let Some(event) = events.next().await {
            let trigger = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => {
                    Trigger::Pod(PodKey::of(&p))
                }
                // Pods deleted while the watch was down never get a Delete event: compare
                // everything once the re-list is complete.
                Ok(watcher::Event::InitDone) => Trigger::All,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(e) => {
                    warn!(error = %e, "pod watch failed; retrying");
                    continue;
                }
            };
            if tx.send(trigger).is_err() {
                return;
            }
        }
    });

    let ns_events = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let ns_task = tokio::spawn(async move {
        let mut events = std::pin::pin!(ns_events);
        while let Some(event) = events.next().await {
            let trigger = match event {
                Ok(watcher::Event::Apply(n) | watcher::Event::Delete(n)) => {
                    Trigger::Namespace(n.name_any())
                }
                Ok(watcher::Event::InitDone) => Trigger::All,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(e) => {
                    warn!(error = %e, "namespace watch failed; retrying");
                    continue;
                }
            };
            if triggers.send(trigger).is_err() {
                return;
            }
        }
    });
    Caches {
        pods,
        namespaces,
        tasks: vec![pod_task, ns_task],
    }
}
