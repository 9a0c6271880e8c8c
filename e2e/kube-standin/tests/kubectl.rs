//! The real kubectl against the stand-in: every version installed on the machine runs the
//! same ambient-enrolment walkthrough.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube_standin::{KubeStandin, Resource};
use serde_json::{json, Value};

const DEFAULT_KUBECTL: &str = "/usr/bin/kubectl";
const VERSIONED_DIR: &str = "/usr/lib/google-cloud-sdk/bin";

const POD_YAML: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  labels:
    app: web
spec:
  nodeName: node-a
  containers:
  - name: web
    image: busybox
";

/// A kubectl bound to one stand-in, with its own kubeconfig, HOME and discovery cache.
struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(bin: PathBuf, api: &KubeStandin) -> Self {
        let dir = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        Kubectl { bin, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--request-timeout=20s")
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("cache").display()
            ))
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("running kubectl");
        eprintln!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "kubectl {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and requires failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("kubectl printed JSON")
    }

    fn spawn(&self, args: &[&str]) -> Background {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kubectl");
        Background(Some(child))
    }
}

/// A long-running kubectl (`get -w`), killed when dropped so a failing test leaves nothing.
struct Background(Option<Child>);

impl Background {
    fn stop(mut self) -> (String, String) {
        let mut child = self.0.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (out, err)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Splits the concatenated pretty-printed JSON documents `get -w -o json` writes.
fn json_stream(s: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("watch output is a JSON stream")
}

fn walkthrough(bin: &Path) {
    let api = KubeStandin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let k = Kubectl::new(bin.to_path_buf(), &api);
    eprintln!("kubectl: {}", k.ok(&["version", "--client"]).trim());

    assert!(k
        .ok(&["create", "namespace", "demo"])
        .contains("namespace/demo created"));
    assert!(k
        .fails(&["create", "namespace", "demo"])
        .contains("AlreadyExists"));

    k.ok(&[
        "label",
        "namespace",
        "demo",
        "istio.io/dataplane-mode=ambient",
    ]);
    let ns = k.json(&["get", "ns", "demo", "-o", "json"]);
    assert_eq!(
        ns["metadata"]["labels"]["istio.io/dataplane-mode"], "ambient",
        "{ns}"
    );
    assert_eq!(ns["status"]["phase"], "Active");
    // One object per page: kubectl must follow continue tokens to see all three.
    let all = k.ok(&["get", "namespaces", "--chunk-size=1", "-o", "name"]);
    assert_eq!(
        all,
        "namespace/default\nnamespace/demo\nnamespace/kube-system\n"
    );
    let listed = k.ok(&["get", "namespaces", "-l", "istio.io/dataplane-mode=ambient"]);
    assert!(listed.contains("demo") && !listed.contains("kube-system"));

    k.ok(&["label", "namespace", "demo", "istio.io/dataplane-mode-"]);
    let ns = k.json(&["get", "ns", "demo", "-o", "json"]);
    assert!(ns["metadata"]["labels"]
        .get("istio.io/dataplane-mode")
        .is_none());

    // Watches start before the pod exists; wait until both are registered so none of the
    // changes below can slip past them.
    let events = k.spawn(&[
        "get",
        "pods",
        "-n",
        "demo",
        "-w",
        "--output-watch-events",
        "-o",
        "json",
    ]);
    let table = k.spawn(&["get", "pods", "-A", "-w"]);
    wait_for("kubectl watches", || api.active_watches() >= 2);

    let pod_file = k.dir.path().join("pod.yaml");
    std::fs::write(&pod_file, POD_YAML).unwrap();
    assert!(k
        .ok(&["create", "-f", pod_file.to_str().unwrap()])
        .contains("pod/web created"));
    let pods = k.ok(&["get", "pods", "-n", "demo"]);
    assert!(pods.contains("NAME") && pods.contains("web") && pods.contains("Pending"));

    k.ok(&[
        "annotate",
        "pod",
        "-n",
        "demo",
        "web",
        "ambient.istio.io/redirection=enabled",
    ]);
    let pod = api.get(Resource::Pod, Some("demo"), "web").unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["ambient.istio.io/redirection"],
        "enabled"
    );

    // Play kubelet: the pod starts and gets an IP.
    api.merge_patch(
        Resource::Pod,
        Some("demo"),
        "web",
        &json!({"status": {"phase": "Running", "podIP": "10.1.0.5"}}),
    )
    .unwrap();
    let wide = k.ok(&["get", "pods", "-A", "-o", "wide"]);
    let row = wide.lines().find(|l| l.contains("web")).expect("web row");
    for cell in ["demo", "Running", "10.1.0.5", "node-a"] {
        assert!(row.contains(cell), "{cell} missing from {row:?}");
    }
    let by_node = k.ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=node-b",
    ]);
    assert!(!by_node.contains("web"));

    assert!(k
        .ok(&["delete", "pod", "-n", "demo", "web"])
        .contains("pod \"web\" deleted"));
    assert!(api.get(Resource::Pod, Some("demo"), "web").is_none());
    assert!(k
        .fails(&["get", "pod", "-n", "demo", "web"])
        .contains("pods \"web\" not found"));
    let out = k.run(&["get", "pods", "-A", "-o", "wide"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found"));

    let (events, err) = events.stop();
    let kinds: Vec<String> = json_stream(&events)
        .iter()
        .filter(|e| e["object"]["metadata"]["name"] == "web")
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("ADDED"), "{err}");
    assert_eq!(kinds.last().map(String::as_str), Some("DELETED"), "{err}");
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| k == "MODIFIED") && kinds.len() >= 4,
        "{kinds:?}"
    );

    let (table, err) = table.stop();
    assert!(table.starts_with("NAMESPACE"), "{table}{err}");
    assert!(
        table.lines().filter(|l| l.contains("web")).count() >= 3,
        "{table}"
    );
    assert!(table.contains("Running"), "{table}");
}

/// What the cni-agent relies on: a namespace label added or removed with kubectl reaches a
/// `kube::runtime::watcher` on namespaces, and an annotation the agent writes is visible to
/// kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_writes_reach_kube_watcher() {
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::watcher;

    let bin = PathBuf::from(DEFAULT_KUBECTL);
    if !bin.exists() {
        println!("SKIPPED: {DEFAULT_KUBECTL} not installed");
        return;
    }
    let api = KubeStandin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let k = Kubectl::new(bin, &api);
    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut events = watcher(namespaces, watcher::Config::default()).boxed();
    let mode = |ns: &Namespace| {
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("istio.io/dataplane-mode").cloned())
    };
    // Waits for the next Apply of namespace "demo" and returns its dataplane-mode label.
    async fn next_demo(
        events: &mut (impl futures_util::Stream<Item = Result<watcher::Event<Namespace>, watcher::Error>>
                  + Unpin),
        mode: impl Fn(&Namespace) -> Option<String>,
    ) -> Option<String> {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("watcher event")
                .expect("watcher stream")
                .expect("watcher error");
            if let watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) = e {
                if ns.metadata.name.as_deref() == Some("demo") {
                    return mode(&ns);
                }
            }
        }
    }

    k.ok(&["create", "namespace", "demo"]);
    assert_eq!(next_demo(&mut events, mode).await, None);
    k.ok(&[
        "label",
        "namespace",
        "demo",
        "istio.io/dataplane-mode=ambient",
    ]);
    assert_eq!(
        next_demo(&mut events, mode).await.as_deref(),
        Some("ambient")
    );
    k.ok(&["label", "namespace", "demo", "istio.io/dataplane-mode-"]);
    assert_eq!(next_demo(&mut events, mode).await, None);

    let pod_file = k.dir.path().join("pod.yaml");
    std::fs::write(&pod_file, POD_YAML).unwrap();
    k.ok(&["create", "-f", pod_file.to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(client, "demo");
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}}),
        ),
    )
    .await
    .unwrap();
    let shown = k.ok(&[
        "get",
        "pod",
        "-n",
        "demo",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}",
    ]);
    assert_eq!(shown, "enabled");
}

fn run_version(bin: PathBuf) {
    if !bin.exists() {
        // Not a silent pass: the output says what was not checked.
        println!("SKIPPED: {} not installed", bin.display());
        eprintln!("SKIPPED: {} not installed", bin.display());
        return;
    }
    walkthrough(&bin);
}

#[test]
fn kubectl_default() {
    run_version(PathBuf::from(DEFAULT_KUBECTL));
}

macro_rules! versioned {
    ($($name:ident => $version:literal),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_version(Path::new(VERSIONED_DIR).join(concat!("kubectl.", $version)));
        }
    )*};
}

versioned! {
    kubectl_1_27 => "1.27",
    kubectl_1_28 => "1.28",
    kubectl_1_29 => "1.29",
    kubectl_1_30 => "1.30",
    kubectl_1_31 => "1.31",
    kubectl_1_32 => "1.32",
    kubectl_1_33 => "1.33",
}
