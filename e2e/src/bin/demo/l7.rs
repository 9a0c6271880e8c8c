//! The demo's L7 part: a waypoint (our binary in cluster mode, as a Gateway of class
//! istio-waypoint's pod) for namespace `demo-l7`, and through it an HTTPRoute 90/10 split, a
//! retry that hides a flaky backend, and an L7 DENY, all applied with kubectl to the real
//! apiserver and pushed by the real istiod.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use meshtunnel::state::Protocol;
use meshtunnel_e2e::cluster::{wait_until, Cluster, PodSpec, DATAPLANE_LABEL};
use meshtunnel_e2e::mesh::http_in;
use meshtunnel_e2e::waypoint::HttpBackend;
use std::time::Duration;
use test_support::NodeId;

use crate::kubectl;

const NS: &str = "demo-l7";
const GATEWAY: &str = "waypoint";
const HTTPROUTES: controlplane::Resource =
    controlplane::Resource::Other("gateway.networking.k8s.io", "v1", "httproutes", true);
const WAIT: Duration = Duration::from_secs(30);

fn apply(cluster: &Cluster, name: &str, yaml: &str) -> Result<()> {
    let file = cluster.dir.path().join(format!("demo-l7-{name}.yaml"));
    std::fs::write(&file, yaml)?;
    for line in yaml.lines() {
        println!("   | {line}");
    }
    kubectl(cluster, &["apply", "-f", &file.to_string_lossy()])
}

fn route(retry: bool) -> String {
    let retry = if retry {
        "    retry: {codes: [503], attempts: 8, backoff: 5ms}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: {NS}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: shop, port: 80}}]
  rules:
  - backendRefs:
    - {{name: shop-v1, port: 80, weight: 90}}
    - {{name: shop-v2, port: 80, weight: 10}}
{retry}"
    )
}

pub fn run(cluster: &Cluster) -> Result<()> {
    println!("\n== L7: a waypoint for namespace {NS} (Gateway class istio-waypoint, our waypoint binary as its pod)");
    cluster.create_namespace(
        NS,
        &[
            (DATAPLANE_LABEL, "ambient"),
            ("istio.io/use-waypoint", GATEWAY),
        ],
    )?;
    let svc = |name: &str, selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
        )
    };
    let services = svc("shop", "app: shop")
        + &svc("shop-v1", "app: shop, version: v1")
        + &svc("shop-v2", "app: shop, version: v2");
    let file = cluster.dir.path().join("demo-l7-services.yaml");
    std::fs::write(&file, services)?;
    kubectl(cluster, &["apply", "-f", &file.to_string_lossy()])?;
    let client = cluster.create_pod(&PodSpec::new("web", NodeId::A).namespace(NS))?;
    let mut pods = Vec::new();
    for (name, version) in [("shop-v1", "v1"), ("shop-v2", "v2")] {
        pods.push(
            cluster.create_pod(
                &PodSpec::new(name, NodeId::B)
                    .namespace(NS)
                    .label("app", "shop")
                    .label("version", version),
            )?,
        );
    }
    let any: SocketAddr = "0.0.0.0:8080".parse()?;
    let _v1 = HttpBackend::start(cluster.netns_of(&pods[0]), any, "shop-v1")?;
    let _v2 = HttpBackend::start(cluster.netns_of(&pods[1]), any, "shop-v2")?;
    cluster.wait_config(&[&client, &pods[0], &pods[1]], Protocol::Hbone, WAIT)?;
    let waypoint = cluster.deploy_waypoint(NS, GATEWAY, NodeId::A, "info")?;
    kubectl(cluster, &["get", "gateway", "-n", NS])?;
    let vip: std::net::IpAddr = cluster
        .api()
        .try_get(controlplane::Resource::Service, Some(NS), "shop")?
        .and_then(|s| s["spec"]["clusterIP"].as_str().and_then(|a| a.parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("no clusterIP for shop"))?;
    let shop = SocketAddr::new(vip, 80);
    let get = |path: &str| http_in(cluster.netns_of(&client), shop, "GET", path);
    wait_until(WAIT, "web -> shop through the waypoint", || {
        get("/").is_ok_and(|(c, _)| c == 200)
    })?;

    println!("\n== an HTTPRoute splitting shop 90/10 between v1 and v2");
    apply(cluster, "route", &route(false))?;
    wait_until(WAIT, "route in the waypoint", || {
        waypoint
            .admin(cluster, "/config_dump")
            .is_ok_and(|(c, b)| c == 200 && b.contains("HTTPRoute demo-l7/shop"))
    })?;
    let (mut v1, mut v2) = (0, 0);
    for i in 0..500 {
        let (_, body) = get(&format!("/item/{i}"))?;
        match body.lines().next() {
            Some("pod=shop-v1") => v1 += 1,
            Some("pod=shop-v2") => v2 += 1,
            other => bail!("unexpected answer {other:?}"),
        }
    }
    println!("   500 requests from web: shop-v1 {v1}, shop-v2 {v2}");

    println!("\n== /flaky answers 503 half the time; then the same route with a retry on 503");
    let ok = |n: usize| -> Result<usize> {
        let mut ok = 0;
        for _ in 0..n {
            ok += usize::from(get("/flaky")?.0 == 200);
        }
        Ok(ok)
    };
    println!("   without retry: {} of 200 succeeded", ok(200)?);
    apply(cluster, "route-retry", &route(true))?;
    // In force once the waypoint's status entry reports the route's new generation.
    wait_until(WAIT, "retry in force", || {
        cluster
            .api()
            .try_get(HTTPROUTES, Some(NS), "shop")
            .ok()
            .flatten()
            .is_some_and(|r| {
                let generation = &r["metadata"]["generation"];
                r["status"]["parents"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p["controllerName"] == "meshtunnel.io/waypoint"
                            && p["conditions"][0]["observedGeneration"] == *generation
                            && generation.as_u64() >= Some(2)
                    })
                })
            })
    })?;
    println!("   with retry:    {} of 200 succeeded", ok(200)?);

    println!("\n== an L7 AuthorizationPolicy: DENY /admin* on shop");
    apply(
        cluster,
        "deny",
        &format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: {NS}}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: shop}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: [\"/admin*\"]}}}}]
"
        ),
    )?;
    wait_until(WAIT, "deny in force", || {
        get("/admin/users").is_ok_and(|(c, _)| c == 403)
    })?;
    for path in ["/admin/users", "/cart"] {
        let (code, body) = get(path)?;
        println!(
            "   GET {path} -> {code} {}",
            body.lines().next().unwrap_or("")
        );
    }
    println!("\n== the route's status: istiod's entry and the waypoint's own");
    kubectl(
        cluster,
        &[
            "get",
            "httproute",
            "shop",
            "-n",
            NS,
            "-o",
            r#"jsonpath={range .status.parents[*]}{.controllerName}{": "}{range .conditions[*]}{.type}={.status} {end}{"\n"}{end}"#,
        ],
    )?;
    Ok(())
}
