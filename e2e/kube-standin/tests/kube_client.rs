//! The `kube` crate's client and runtime watcher against the stand-in, the way the cni-agent
//! uses them.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use kube_standin::{KubeStandin, Resource};
use serde_json::json;

const STEP: Duration = Duration::from_secs(10);

fn start() -> (KubeStandin, Client) {
    start_with(KubeStandin::builder())
}

fn start_with(builder: kube_standin::Builder) -> (KubeStandin, Client) {
    let api = builder.start("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = Client::try_from(Config::new(api.url().parse().unwrap())).unwrap();
    (api, client)
}

fn pod(ns: &str, name: &str, node: Option<&str>, labels: serde_json::Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": "busybox"}]});
    if let Some(node) = node {
        spec["nodeName"] = node.into();
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
    }))
    .unwrap()
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .unwrap()
}

async fn next<S: Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(STEP, s.next())
        .await
        .expect("timed out waiting for a watch event")
        .expect("watch stream ended")
}

fn event_summary<K: ResourceExt>(e: &WatchEvent<K>) -> (String, String) {
    match e {
        WatchEvent::Added(o) => ("ADDED".into(), o.name_any()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.name_any()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.name_any()),
        WatchEvent::Bookmark(_) => ("BOOKMARK".into(), String::new()),
        WatchEvent::Error(s) => ("ERROR".into(), s.reason.clone()),
    }
}

fn rv<K: ResourceExt>(obj: &K) -> u64 {
    obj.resource_version().unwrap().parse().unwrap()
}

#[tokio::test]
async fn list_and_watch_see_changes_in_order() {
    let (_api, client) = start();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let all_pods: Api<Pod> = Api::all(client.clone());

    let ns_list = namespaces.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = ns_list.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, ["default", "kube-system"]);
    let list_rv = ns_list.metadata.resource_version.unwrap();
    let pod_list = all_pods.list(&ListParams::default()).await.unwrap();
    assert!(pod_list.items.is_empty());

    let wp = WatchParams::default().timeout(30);
    let mut ns_watch = namespaces.watch(&wp, &list_rv).await.unwrap().boxed();
    let mut pod_watch = all_pods.watch(&wp, &list_rv).await.unwrap().boxed();

    namespaces
        .create(&PostParams::default(), &namespace("demo"))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let created = pods
        .create(
            &PostParams::default(),
            &pod("demo", "web", Some("node-a"), json!({"app": "web"})),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "fe"}}})),
    )
    .await
    .unwrap();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    namespaces
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();

    let mut last = 0;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next(&mut pod_watch).await.unwrap();
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) = &e {
            assert!(rv(p) > last, "resourceVersions must increase");
            last = rv(p);
            assert_eq!(p.namespace().as_deref(), Some("demo"));
        }
        seen.push(event_summary(&e));
    }
    let want = |t: &str| (t.to_string(), "web".to_string());
    assert_eq!(seen, [want("ADDED"), want("MODIFIED"), want("DELETED")]);

    let ns_events: Vec<_> = vec![
        event_summary(&next(&mut ns_watch).await.unwrap()),
        event_summary(&next(&mut ns_watch).await.unwrap()),
    ];
    assert_eq!(
        ns_events,
        [
            ("ADDED".to_string(), "demo".to_string()),
            ("DELETED".to_string(), "demo".to_string())
        ]
    );
}

#[tokio::test]
async fn api_errors_are_status_objects() {
    let (_api, client) = start();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let err = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an API error: {other}"),
    };
    assert_eq!(
        err(pods.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    let p = pod("default", "a", None, json!({}));
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(
        err(pods.create(&PostParams::default(), &p).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    // A write based on a stale read conflicts.
    let mut stale = created.clone();
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    stale.labels_mut().insert("y".into(), "2".into());
    assert_eq!(
        err(pods
            .replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err()),
        (409, "Conflict".into())
    );
    let fresh = pods.get("a").await.unwrap();
    let mut ok = fresh.clone();
    ok.labels_mut().insert("y".into(), "2".into());
    let replaced = pods
        .replace("a", &PostParams::default(), &ok)
        .await
        .unwrap();
    assert!(rv(&replaced) > rv(&fresh));
    assert_eq!(replaced.labels().get("x").map(String::as_str), Some("1"));

    let elsewhere: Api<Pod> = Api::namespaced(client, "missing");
    assert_eq!(
        err(elsewhere
            .create(
                &PostParams::default(),
                &pod("missing", "b", None, json!({}))
            )
            .await
            .unwrap_err()),
        (404, "NotFound".into())
    );
    assert_eq!(
        err(pods
            .list(&ListParams::default().fields("spec.bogus=1"))
            .await
            .unwrap_err()),
        (400, "BadRequest".into())
    );
}

#[tokio::test]
async fn merge_and_strategic_patches_edit_annotations() {
    let (api, client) = start();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(
        &PostParams::default(),
        &pod("default", "web", Some("node-a"), json!({})),
    )
    .await
    .unwrap();
    let annotations = |p: &Pod| p.annotations().clone();

    let p = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "ambient.istio.io/redirection": "pending", "keep": "me"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        annotations(&p),
        BTreeMap::from([
            ("ambient.istio.io/redirection".into(), "pending".into()),
            ("keep".into(), "me".into())
        ])
    );

    let p = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.annotations()["ambient.istio.io/redirection"], "enabled");
    assert_eq!(p.annotations()["keep"], "me");

    let p = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"metadata": {"annotations": {"ambient.istio.io/redirection": null}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        annotations(&p),
        BTreeMap::from([("keep".into(), "me".into())])
    );
    let p = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"keep": null}}})),
        )
        .await
        .unwrap();
    assert!(p.metadata.annotations.unwrap_or_default().is_empty());

    // The status subresource patches status only; the main resource leaves status alone.
    let p = pods
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.1.0.7"},
                                  "metadata": {"labels": {"ignored": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.1.0.7")
    );
    assert!(!p.labels().contains_key("ignored"));
    let p = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    let stored = api.get(Resource::Pod, Some("default"), "web").unwrap();
    assert_eq!(stored["status"]["podIP"], "10.1.0.7");
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let (api, client) = start();
    let pods: Api<Pod> = Api::all(client.clone());
    let default: Api<Pod> = Api::namespaced(client, "default");
    for (name, node, labels) in [
        (
            "a",
            Some("node-a"),
            json!({"app": "web", "istio.io/dataplane-mode": "ambient"}),
        ),
        ("b", Some("node-b"), json!({"app": "web"})),
        (
            "c",
            None,
            json!({"app": "db", "istio.io/dataplane-mode": "none"}),
        ),
    ] {
        default
            .create(&PostParams::default(), &pod("default", name, node, labels))
            .await
            .unwrap();
    }
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(names(on_a), ["a"]);
    let unscheduled = pods
        .list(&ListParams::default().fields("spec.nodeName="))
        .await
        .unwrap();
    assert_eq!(names(unscheduled), ["c"]);
    let cases = [
        ("app=web", vec!["a", "b"]),
        ("app!=web", vec!["c"]),
        ("istio.io/dataplane-mode", vec!["a", "c"]),
        ("!istio.io/dataplane-mode", vec!["b"]),
        (
            "app in (db,cache),istio.io/dataplane-mode notin (ambient)",
            vec!["c"],
        ),
    ];
    for (selector, want) in cases {
        let got = names(
            pods.list(&ListParams::default().labels(selector))
                .await
                .unwrap(),
        );
        assert_eq!(got, want, "labelSelector {selector}");
    }

    // A field-selected watch sees a pod that starts matching as ADDED and one that stops
    // matching as DELETED, like the real watch cache.
    let rv = api.resource_version().to_string();
    let mut w = pods
        .watch(&WatchParams::default().fields("spec.nodeName=node-a"), &rv)
        .await
        .unwrap()
        .boxed();
    api.merge_patch(
        Resource::Pod,
        Some("default"),
        "b",
        &json!({"metadata": {"labels": {"x": "1"}}}),
    )
    .unwrap();
    api.merge_patch(
        Resource::Pod,
        Some("default"),
        "c",
        &json!({"spec": {"nodeName": "node-a"}}),
    )
    .unwrap();
    api.merge_patch(
        Resource::Pod,
        Some("default"),
        "a",
        &json!({"spec": {"nodeName": "node-b"}}),
    )
    .unwrap();
    let got = vec![
        event_summary(&next(&mut w).await.unwrap()),
        event_summary(&next(&mut w).await.unwrap()),
    ];
    assert_eq!(
        got,
        [("ADDED".into(), "c".into()), ("DELETED".into(), "a".into())]
    );
}

#[tokio::test]
async fn expired_resource_version_gets_410_gone() {
    let (api, client) = start();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let old = api.resource_version().to_string();
    pods.create(
        &PostParams::default(),
        &pod("default", "a", None, json!({})),
    )
    .await
    .unwrap();
    api.expire_history();
    let mut w = pods
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next(&mut w).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {:?}", event_summary(&other)),
    }
    // Versions handed out after the expiry resume normally.
    pods.create(
        &PostParams::default(),
        &pod("default", "b", None, json!({})),
    )
    .await
    .unwrap();
    let after = api.resource_version().to_string();
    let mut w = pods
        .watch(&WatchParams::default(), &after)
        .await
        .unwrap()
        .boxed();
    api.delete(Resource::Pod, Some("default"), "a").unwrap();
    assert_eq!(
        event_summary(&next(&mut w).await.unwrap()),
        ("DELETED".into(), "a".into())
    );
}

#[tokio::test]
async fn history_limit_expires_old_versions() {
    let (api, client) = start_with(KubeStandin::builder().history_limit(3));
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let start_rv = api.resource_version();
    for i in 0..5 {
        pods.create(
            &PostParams::default(),
            &pod("default", &format!("p{i}"), None, json!({})),
        )
        .await
        .unwrap();
    }
    let mut w = pods
        .watch(&WatchParams::default(), &start_rv.to_string())
        .await
        .unwrap()
        .boxed();
    assert_eq!(event_summary(&next(&mut w).await.unwrap()).0, "ERROR");
    // Three changes are retained: resuming just before them replays them.
    let mut w = pods
        .watch(&WatchParams::default(), &(start_rv + 2).to_string())
        .await
        .unwrap()
        .boxed();
    for want in ["p2", "p3", "p4"] {
        assert_eq!(
            event_summary(&next(&mut w).await.unwrap()),
            ("ADDED".into(), want.into())
        );
    }
}

type WatcherStream =
    futures_util::stream::BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>;

/// The next watcher event, summarised; with `error_ok`, a 410 error item counts as "error".
async fn expect(events: &mut WatcherStream, error_ok: bool) -> String {
    loop {
        match next(events).await {
            Ok(watcher::Event::Init) => return "Init".into(),
            Ok(watcher::Event::InitDone) => return "InitDone".into(),
            Ok(watcher::Event::InitApply(p)) => return format!("InitApply {}", p.name_any()),
            Ok(watcher::Event::Apply(p)) => return format!("Apply {}", p.name_any()),
            Ok(watcher::Event::Delete(p)) => return format!("Delete {}", p.name_any()),
            Err(e) => {
                assert!(format!("{e:?}").contains("410"), "{e:?}");
                if error_ok {
                    return "error".into();
                }
            }
        }
    }
}

#[tokio::test]
async fn runtime_watcher_relists_after_410() {
    let (api, client) = start();
    let pods: Api<Pod> = Api::all(client);
    let mut events: WatcherStream = watcher(pods, watcher::Config::default()).boxed();

    assert_eq!(expect(&mut events, false).await, "Init");
    assert_eq!(expect(&mut events, false).await, "InitDone");
    api.create(serde_json::to_value(pod("default", "a", None, json!({}))).unwrap())
        .unwrap();
    assert_eq!(expect(&mut events, false).await, "Apply a");

    // History is gone and the watch is cut: resuming from "a"'s resourceVersion fails with
    // 410, and the watcher must re-list to learn about "b".
    api.expire_history();
    api.create(serde_json::to_value(pod("default", "b", None, json!({}))).unwrap())
        .unwrap();
    assert_eq!(expect(&mut events, true).await, "error");
    assert_eq!(expect(&mut events, false).await, "Init");
    let mut relisted = vec![
        expect(&mut events, false).await,
        expect(&mut events, false).await,
    ];
    relisted.sort();
    assert_eq!(relisted, ["InitApply a", "InitApply b"]);
    assert_eq!(expect(&mut events, false).await, "InitDone");
    api.delete(Resource::Pod, Some("default"), "a").unwrap();
    assert_eq!(expect(&mut events, false).await, "Delete a");
}

#[tokio::test]
async fn streaming_list_watcher_and_bookmarks() {
    let (api, client) =
        start_with(KubeStandin::builder().bookmark_interval(Duration::from_millis(100)));
    api.create(serde_json::to_value(pod("default", "a", None, json!({}))).unwrap())
        .unwrap();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("InitDone") {
        got.push(match next(&mut events).await.unwrap() {
            watcher::Event::Init => "Init".into(),
            watcher::Event::InitApply(p) => format!("InitApply {}", p.name_any()),
            watcher::Event::InitDone => "InitDone".into(),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(got, ["Init", "InitApply a", "InitDone"]);

    let rv = api.resource_version().to_string();
    let mut w = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut w).await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {:?}", event_summary(&other)),
    }
}

#[tokio::test]
async fn kubeconfig_works_for_the_kube_crate() {
    let api = KubeStandin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let ns: Api<Namespace> = Api::all(client);
    assert!(ns.get("default").await.is_ok());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let api = KubeStandin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = api.addr();
    let client = Client::try_from(Config::new(api.url().parse().unwrap())).unwrap();
    let pods: Api<Pod> = Api::all(client);
    let mut w = pods
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    drop(api);
    // The open watch ends rather than hanging, and nothing listens any more.
    let end = tokio::time::timeout(STEP, async { while let Some(Ok(_)) = w.next().await {} }).await;
    assert!(end.is_ok());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let (api, client) = start();
    for name in ["a", "b", "c"] {
        api.create(serde_json::to_value(pod("default", name, None, json!({}))).unwrap())
            .unwrap();
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["c"]
    );
    assert!(rest.metadata.continue_.is_none());

    // The runtime watcher follows the pages too.
    let mut events: WatcherStream = watcher(pods, watcher::Config::default().page_size(1)).boxed();
    let mut got = Vec::new();
    loop {
        let e = expect(&mut events, false).await;
        if e == "InitDone" {
            break;
        }
        got.push(e);
    }
    assert_eq!(got, ["Init", "InitApply a", "InitApply b", "InitApply c"]);
}

#[tokio::test]
async fn metadata_lists_and_watches() {
    let (api, client) = start();
    api.create(
        serde_json::to_value(pod("default", "a", Some("node-a"), json!({"app": "web"}))).unwrap(),
    )
    .unwrap();
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].labels()["app"], "web");

    let meta: Api<kube::core::PartialObjectMeta<Pod>> = Api::all(client);
    let mut events = watcher(meta, watcher::Config::default()).boxed();
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("InitDone") {
        got.push(match next(&mut events).await.unwrap() {
            watcher::Event::Init => "Init".into(),
            watcher::Event::InitApply(p) => format!("InitApply {}", p.name_any()),
            watcher::Event::InitDone => "InitDone".into(),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(got, ["Init", "InitApply a", "InitDone"]);
    api.merge_patch(
        Resource::Pod,
        Some("default"),
        "a",
        &json!({"metadata": {"annotations": {"k": "v"}}}),
    )
    .unwrap();
    match next(&mut events).await.unwrap() {
        watcher::Event::Apply(p) => assert_eq!(p.annotations()["k"], "v"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn watch_ends_after_timeout_seconds() {
    let (_api, client) = start();
    let pods: Api<Pod> = Api::all(client);
    let mut w = pods
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(STEP, w.next()).await.unwrap();
    assert!(ended.is_none());
}
