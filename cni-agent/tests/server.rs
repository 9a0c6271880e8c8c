//! The plugin-request server against well-behaved and garbled peers.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use cni_agent::protocol::{
    encode, read_frame, EnrollRequest, PodRef, ReleaseRequest, Reply, Request,
};
use cni_agent::server::PluginServer;
use common::{Agent, ScriptedEnroller};

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "demo".into(),
        name: name.into(),
        uid: "uid-1".into(),
    }
}

fn add(name: &str) -> Request {
    Request::Add(EnrollRequest {
        pod: pod(name),
        container_id: "c1".into(),
        infra_container_id: None,
        netns: "/var/run/netns/x".into(),
        ifname: "eth0".into(),
        ips: vec!["10.1.0.5".parse().unwrap()],
    })
}

fn raw_exchange(agent: &Agent, bytes: &[u8]) -> Result<Reply, String> {
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    read_frame::<Reply>(&mut s).map_err(|e| e.to_string())
}

fn ask(agent: &Agent, req: &Request) -> Reply {
    raw_exchange(agent, &encode(req)).unwrap()
}

#[test]
fn decisions_reach_the_plugin() {
    let agent = Agent::start();
    assert_eq!(
        ask(&agent, &add("web")),
        Reply {
            mesh: true,
            error: None
        }
    );
    assert_eq!(
        ask(&agent, &add("not-mesh")),
        Reply {
            mesh: false,
            error: None
        }
    );
    let failed = ask(&agent, &add("mesh-fail"));
    assert!(failed.error.unwrap().contains("netns vanished"));
    let del = Request::Del(ReleaseRequest {
        pod: pod("web"),
        container_id: "c1".into(),
        netns: None,
    });
    assert_eq!(ask(&agent, &del).error, None);
    let seen = agent.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], add("web"));
    assert_eq!(seen[3], del);
}

#[test]
fn garbled_requests_get_an_error_and_the_server_keeps_serving() {
    let agent = Agent::start();
    let bad_length = raw_exchange(&agent, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(bad_length.error.unwrap().contains("bad request"));

    let mut not_json = 5u32.to_be_bytes().to_vec();
    not_json.extend_from_slice(b"{{{{{");
    assert!(raw_exchange(&agent, &not_json).unwrap().error.is_some());

    let unknown_op = encode(&serde_json::json!({"op": "gc", "pod": {}}));
    assert!(raw_exchange(&agent, &unknown_op).unwrap().error.is_some());

    let zero = 0u32.to_be_bytes();
    assert!(raw_exchange(&agent, &zero).unwrap().error.is_some());

    // A peer that announces a body and then hangs up.
    {
        let mut s = UnixStream::connect(&agent.socket).unwrap();
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.write_all(b"{\"op\"").unwrap();
    }
    // One that connects and says nothing.
    drop(UnixStream::connect(&agent.socket).unwrap());

    assert_eq!(ask(&agent, &add("web")).error, None);
    assert_eq!(agent.seen().len(), 1, "garbage never reached the enroller");
}

#[test]
fn bind_replaces_a_stale_socket_but_not_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let enroller = std::sync::Arc::new(ScriptedEnroller::default());

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = PluginServer::bind(&stale, enroller.clone()).unwrap();
    let mode = std::fs::metadata(server.path()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    assert!(PluginServer::bind(&file, enroller).is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn shutdown_removes_the_socket() {
    let mut agent = Agent::start();
    assert!(agent.socket.exists());
    agent.stop();
    assert!(!agent.socket.exists());
    assert!(UnixStream::connect(&agent.socket).is_err());
}

#[test]
fn an_old_agent_stopping_leaves_the_new_agents_socket() {
    let mut old = Agent::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let enroller = std::sync::Arc::new(ScriptedEnroller::default());
    let new = PluginServer::bind(&old.socket, enroller.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(new.serve(async {
        let _ = stopped.await;
    }));
    old.stop();
    assert!(
        old.socket.exists(),
        "the old agent removed the new agent's socket"
    );
    let mut s = UnixStream::connect(&old.socket).unwrap();
    s.write_all(&encode(&add("web"))).unwrap();
    assert_eq!(read_frame::<Reply>(&mut s).unwrap().error, None);
    assert_eq!(enroller.seen.lock().unwrap().len(), 1);
    stop.send(()).unwrap();
    rt.block_on(served).unwrap();
    assert!(!old.socket.exists());
}
