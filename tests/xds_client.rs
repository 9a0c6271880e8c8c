//! The xDS client against a real gRPC server playing istiod: headers, node, ACK/NACK with
//! nonces, partial apply, readiness, reconnect with initial_resource_versions, removals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::config::ConfigSources;
use meshtunnel::state::{ConfigSnapshot, State};
use meshtunnel::xds::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use meshtunnel::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use meshtunnel::xds::proto::{core::Node, workload as pw};
use meshtunnel::xds::status::XdsStatus;
use meshtunnel::xds::{protocol, ClientConfig};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

type Out = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// One stream as the test sees it.
struct Conn {
    headers: tonic::metadata::MetadataMap,
    inbound: Streaming<DeltaDiscoveryRequest>,
    out: Out,
}

struct FakeIstiod(mpsc::Sender<Conn>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeIstiod {
    type DeltaAggregatedResourcesStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = Result<DeltaDiscoveryResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let headers = req.metadata().clone();
        let (tx, rx) = mpsc::channel(16);
        let _ = self
            .0
            .send(Conn {
                headers,
                inbound: req.into_inner(),
                out: tx,
            })
            .await;
        let s =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(s)))
    }
}

fn workload(uid: &str, ip: [u8; 4], svc: Option<&str>) -> Resource {
    let mut w = pw::Workload {
        uid: uid.into(),
        name: uid.rsplit('/').next().unwrap().into(),
        namespace: "demo".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        ..Default::default()
    };
    if let Some(s) = svc {
        w.services.insert(
            s.into(),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        );
    }
    address_resource(uid, pw::address::Type::Workload(w))
}

fn address_resource(name: &str, t: pw::address::Type) -> Resource {
    Resource {
        name: name.into(),
        version: "v1".into(),
        resource: Some(prost_types::Any {
            type_url: protocol::ADDRESS_TYPE.into(),
            value: pw::Address { r#type: Some(t) }.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn push(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sv-{nonce}"),
        resources,
        type_url: type_url.into(),
        nonce: nonce.into(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
    }
}

async fn next(c: &mut Conn) -> DeltaDiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(10), c.inbound.message())
        .await
        .expect("client answers in time")
        .expect("stream ok")
        .expect("stream open")
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn client_speaks_delta_ads_to_a_real_grpc_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conn_tx, mut conns) = mpsc::channel(4);
    let server_stop = CancellationToken::new();
    let ss = server_stop.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FakeIstiod(conn_tx)))
            .serve_with_incoming_shutdown(tokio_stream_listener(listener), ss.cancelled_owned())
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "tok-123\n").unwrap();
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let sources = Arc::new(ConfigSources::new(state.clone(), true));
    let status = Arc::new(XdsStatus::new(&format!("http://{addr}")));
    let cfg = ClientConfig {
        address: format!("http://{addr}"),
        root_ca: dir.path().join("unused.pem"),
        alt_hostname: None,
        token_path: token,
        cluster_id: "cluster-7".into(),
        node: Node {
            id: "ztunnel~10.0.0.5~zt.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        },
        defaults: meshtunnel::xds::Defaults {
            trust_domain: "cluster.local".into(),
        },
    };
    let stop = CancellationToken::new();
    let metrics = meshtunnel::metrics::Metrics::new(Duration::from_secs(60));
    let xds_metrics = metrics.xds.clone();
    let client = tokio::spawn(meshtunnel::xds::run(
        cfg,
        sources.clone(),
        status.clone(),
        xds_metrics.clone(),
        stop.clone(),
    ));

    // First stream: headers, then one wildcard request per type with the node.
    let mut c = tokio::time::timeout(Duration::from_secs(10), conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.headers.get("authorization").unwrap(), "Bearer tok-123");
    assert_eq!(c.headers.get("clusterid").unwrap(), "cluster-7");
    let mut types = vec![];
    for _ in 0..2 {
        let r = next(&mut c).await;
        assert!(r.node.as_ref().unwrap().id.starts_with("ztunnel~10.0.0.5~"));
        assert!(r.initial_resource_versions.is_empty());
        types.push(r.type_url);
    }
    assert_eq!(
        types,
        [protocol::ADDRESS_TYPE, protocol::AUTHORIZATION_TYPE]
    );

    // A push with one bad workload: NACKed with its nonce, the others applied.
    let svc = "demo/echo.demo.svc.cluster.local";
    let mut bad = workload("Kubernetes//Pod/demo/bad", [10, 0, 0, 9], None);
    bad.resource.as_mut().unwrap().value = vec![0xff; 4];
    c.out
        .send(Ok(push(
            protocol::ADDRESS_TYPE,
            "n1",
            vec![
                workload("Kubernetes//Pod/demo/a", [10, 0, 0, 1], Some(svc)),
                workload("Kubernetes//Pod/demo/b", [10, 0, 0, 2], Some(svc)),
                bad,
                address_resource(
                    svc,
                    pw::address::Type::Service(pw::Service {
                        name: "echo".into(),
                        namespace: "demo".into(),
                        hostname: "echo.demo.svc.cluster.local".into(),
                        addresses: vec![pw::NetworkAddress {
                            network: String::new(),
                            address: vec![10, 96, 0, 10],
                            length: None,
                        }],
                        ports: vec![pw::Port {
                            service_port: 80,
                            target_port: 8080,
                            app_protocol: 0,
                        }],
                        ..Default::default()
                    }),
                ),
            ],
            &[],
        )))
        .await
        .unwrap();
    let nack = next(&mut c).await;
    assert_eq!(nack.response_nonce, "n1");
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("Kubernetes//Pod/demo/bad"));
    let cur = state.current();
    assert!(cur.workload_by_uid("Kubernetes//Pod/demo/a").is_some());
    assert!(cur.workload_by_uid("Kubernetes//Pod/demo/bad").is_none());
    let echo = cur.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
    assert_eq!(cur.endpoints(echo).len(), 2);
    assert!(!status.synced(), "only one type pushed so far");

    c.out
        .send(Ok(push(protocol::AUTHORIZATION_TYPE, "n2", vec![], &[])))
        .await
        .unwrap();
    let ack = next(&mut c).await;
    assert_eq!(ack.response_nonce, "n2");
    assert!(ack.error_detail.is_none());
    wait_until("synced", || status.synced()).await;
    let snap = status.snapshot();
    assert_eq!(snap.types["Address"].nacks, 1);
    assert_eq!(snap.types["Address"].resources, 3);
    assert_eq!(snap.types["Authorization"].acks, 1);

    // istiod ends the stream: the config stays; the client comes back with what it holds.
    drop(c);
    let mut c = tokio::time::timeout(Duration::from_secs(10), conns.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(state
        .current()
        .workload_by_uid("Kubernetes//Pod/demo/a")
        .is_some());
    let r = next(&mut c).await;
    assert_eq!(r.type_url, protocol::ADDRESS_TYPE);
    let mut held: Vec<_> = r.initial_resource_versions.keys().cloned().collect();
    held.sort();
    assert_eq!(
        held,
        ["Kubernetes//Pod/demo/a", "Kubernetes//Pod/demo/b", svc]
    );
    let _ = next(&mut c).await;

    // Removing a workload removes it as an endpoint.
    c.out
        .send(Ok(push(
            protocol::ADDRESS_TYPE,
            "n3",
            vec![],
            &["Kubernetes//Pod/demo/a"],
        )))
        .await
        .unwrap();
    assert_eq!(next(&mut c).await.response_nonce, "n3");
    let cur = state.current();
    assert!(cur.workload_by_uid("Kubernetes//Pod/demo/a").is_none());
    let echo = cur.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
    assert_eq!(cur.endpoints(echo).len(), 1);
    assert!(status.snapshot().connections >= 2);
    let text = metrics.encode();
    for want in [
        "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"} 2",
        "istio_xds_message_bytes_total{url=\"type.googleapis.com/istio.workload.Address\"}",
        "istio_xds_connection_terminations_total{reason=\"Complete\"} 1",
        "ztunnel_xds_nacks_total{url=\"type.googleapis.com/istio.workload.Address\"} 1",
        // The second stream is open.
        "ztunnel_xds_connected 1",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }

    stop.cancel();
    client.await.unwrap();
    server_stop.cancel();
    drop(c);
    server.await.unwrap();
}

/// The listener as the incoming-connection stream tonic's server takes.
fn tokio_stream_listener(
    l: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}
