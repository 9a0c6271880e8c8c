//! In-pod redirect rules against real netfilter in namespaces this test creates.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use meshtunnel::redirect::{self, Backend, RedirectConfig, RedirectError};
use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Socket, Type};
use test_support::{run_in, unique_prefix, Netns, NodeId, Topology};

const BACKENDS: [Backend; 2] = [Backend::Iptables, Backend::Nftables];
const TIMEOUT: Duration = Duration::from_secs(5);

/// Everything install could touch, in a form that compares equal when nothing changed.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    iptables: String,
    nft: String,
    rules: String,
    routes: String,
}

fn snapshot(ns: &Netns) -> Snapshot {
    let run = |prog: &str, args: &[&str]| ns.exec(prog, args).unwrap();
    // iptables-save stamps comments with the time; they say nothing about state.
    let iptables = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    Snapshot {
        iptables,
        nft: run("nft", &["list", "ruleset"]),
        rules: run("ip", &["-4", "rule"]) + &run("ip", &["-6", "rule"]),
        routes: run("ip", &["-4", "route", "show", "table", "all"])
            + &run("ip", &["-6", "route", "show", "table", "all"]),
    }
}

fn assert_installed(ns: &Netns, backend: Backend) {
    let s = snapshot(ns);
    match backend {
        Backend::Iptables => {
            for line in [
                "-A PREROUTING -j ISTIO_PRERT",
                "-A OUTPUT -j ISTIO_OUTPUT",
                "-p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
                "-j REDIRECT --to-ports 15006",
                "-j REDIRECT --to-ports 15001",
                "-j CONNMARK --set-xmark 0x111/0xfff",
                "-j CONNMARK --restore-mark",
            ] {
                assert_eq!(
                    s.iptables.matches(line).count(),
                    if line.starts_with("-A PREROUTING") || line.starts_with("-A OUTPUT") {
                        2 // one hook each in nat and mangle
                    } else {
                        1
                    },
                    "{line:?} in\n{}",
                    s.iptables
                );
            }
        }
        Backend::Nftables => {
            assert_eq!(
                s.nft.matches("table ip istio-inpod").count(),
                1,
                "{}",
                s.nft
            );
            for line in [
                "redirect to :15006",
                "redirect to :15001",
                "tcp dport != 15008",
                "meta mark set ct mark",
                "type route hook output priority mangle",
            ] {
                assert_eq!(s.nft.matches(line).count(), 1, "{line:?} in\n{}", s.nft);
            }
        }
    }
    assert_eq!(
        s.rules
            .matches("32764:\tfrom all fwmark 0x111/0xfff lookup 100")
            .count(),
        // v6 is best effort: only expected where the netns has IPv6 at all.
        if Path::new("/proc/sys/net/ipv6").exists() {
            2
        } else {
            1
        },
        "{}",
        s.rules
    );
    assert!(
        s.routes.contains("local default dev lo table 100"),
        "{}",
        s.routes
    );
    // The fwmark rule really steers marked packets to local delivery.
    let got = ns
        .exec("ip", &["route", "get", "10.9.9.9", "mark", "0x111"])
        .unwrap();
    assert!(got.starts_with("local 10.9.9.9 dev lo table 100"), "{got}");
}

fn install_idempotent_uninstall_restores(backend: Backend) {
    let ns = Netns::create(&format!("{}-p", unique_prefix())).unwrap();
    let cfg = RedirectConfig::default();
    let before = snapshot(&ns);
    let host_sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap();
    assert!(!redirect::is_installed(&ns.path(), backend).unwrap());
    assert!(!redirect::listener_migration_enabled(&ns.path()).unwrap());
    redirect::install(&ns.path(), backend, &cfg).unwrap();
    assert_installed(&ns, backend);
    // A closing ztunnel listener hands its queue to the new one (upgrade without resets).
    assert!(redirect::listener_migration_enabled(&ns.path()).unwrap());
    // ...and only in this pod: our own namespace is untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap(),
        host_sysctl
    );
    assert!(redirect::is_installed(&ns.path(), backend).unwrap());
    let once = snapshot(&ns);
    redirect::install(&ns.path(), backend, &cfg).unwrap();
    assert_installed(&ns, backend);
    assert_eq!(snapshot(&ns), once, "second install changed state");
    redirect::uninstall(&ns.path(), backend, &cfg).unwrap();
    assert_eq!(snapshot(&ns), before);
    assert!(!redirect::is_installed(&ns.path(), backend).unwrap());
    // Uninstalling what is not there is fine and changes nothing.
    redirect::uninstall(&ns.path(), backend, &cfg).unwrap();
    assert_eq!(snapshot(&ns), before);
}

#[test]
fn iptables_install_is_idempotent_and_uninstall_restores() {
    install_idempotent_uninstall_restores(Backend::Iptables);
}

#[test]
fn nft_install_is_idempotent_and_uninstall_restores() {
    install_idempotent_uninstall_restores(Backend::Nftables);
}

#[test]
fn dns_capture_rules_appear_only_when_enabled() {
    let ns = Netns::create(&format!("{}-d", unique_prefix())).unwrap();
    for backend in BACKENDS {
        let cfg = RedirectConfig {
            dns_capture: true,
            ..Default::default()
        };
        redirect::install(&ns.path(), backend, &cfg).unwrap();
        let s = snapshot(&ns);
        let text = match backend {
            Backend::Iptables => s.iptables,
            Backend::Nftables => s.nft,
        };
        assert!(text.contains("15053"), "{text}");
        redirect::uninstall(&ns.path(), backend, &cfg).unwrap();
    }
}

#[test]
fn works_through_proc_pid_ns_path() {
    let ns = Netns::create(&format!("{}-q", unique_prefix())).unwrap();
    let sleeper = ns.spawn("sleep", &["60"]).unwrap();
    let path = format!("/proc/{}/ns/net", sleeper.id());
    let before = snapshot(&ns);
    for backend in BACKENDS {
        redirect::install(Path::new(&path), backend, &RedirectConfig::default()).unwrap();
        assert_installed(&ns, backend);
        redirect::uninstall(Path::new(&path), backend, &RedirectConfig::default()).unwrap();
        assert_eq!(snapshot(&ns), before);
    }
}

#[test]
fn errors_name_the_netns() {
    let cfg = RedirectConfig::default();
    let missing = Path::new("/var/run/netns/does-not-exist-meshtunnel");
    let err = redirect::install(missing, Backend::Nftables, &cfg).unwrap_err();
    assert!(matches!(err, RedirectError::OpenNetns { .. }));
    assert!(
        err.to_string().contains("does-not-exist-meshtunnel"),
        "{err}"
    );
    // A file that is not a namespace must fail, not run the command in our own netns.
    let err =
        redirect::install(Path::new("/proc/self/status"), Backend::Nftables, &cfg).unwrap_err();
    assert!(matches!(err, RedirectError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/proc/self/status"), "{err}");
}

#[test]
fn command_failure_carries_stderr() {
    let ns = Netns::create(&format!("{}-e", unique_prefix())).unwrap();
    // Someone else's rule jumping into our chain makes the chain impossible to delete.
    redirect::install(&ns.path(), Backend::Iptables, &RedirectConfig::default()).unwrap();
    ns.exec(
        "iptables",
        &["-w", "-t", "mangle", "-A", "INPUT", "-j", "ISTIO_PRERT"],
    )
    .unwrap();
    let err =
        redirect::uninstall(&ns.path(), Backend::Iptables, &RedirectConfig::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RedirectError::Command { .. }), "{err:?}");
    assert!(
        msg.contains(ns.name()) && msg.contains("iptables-restore"),
        "{msg}"
    );
    ns.exec(
        "iptables",
        &["-w", "-t", "mangle", "-D", "INPUT", "-j", "ISTIO_PRERT"],
    )
    .unwrap();
    redirect::uninstall(&ns.path(), Backend::Iptables, &RedirectConfig::default()).unwrap();
}

fn original_dst(s: &TcpStream) -> SocketAddrV4 {
    let sa = getsockopt(s, sockopt::OriginalDst).expect("SO_ORIGINAL_DST");
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

fn listen(ns: &Netns, addr: Ipv4Addr, port: u16) -> TcpListener {
    let l = run_in(ns, || TcpListener::bind((addr, port)).unwrap());
    l.set_nonblocking(false).unwrap();
    l
}

/// Accept one connection within TIMEOUT, so a missed redirect fails instead of hanging.
fn accept(l: &TcpListener) -> (TcpStream, SocketAddr) {
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                return (s, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection arrived"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn connect_from(
    ns: &Netns,
    to: SocketAddrV4,
    mark: Option<u32>,
    bind: Option<Ipv4Addr>,
) -> TcpStream {
    run_in(ns, || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if let Some(m) = mark {
            s.set_mark(m).unwrap();
        }
        if let Some(b) = bind {
            s.bind(&SocketAddrV4::new(b, 0).into()).unwrap();
        }
        s.connect_timeout(&to.into(), TIMEOUT).unwrap();
        s.into()
    })
}

fn traffic_is_redirected(backend: Backend) {
    let topo = Topology::two_nodes(&unique_prefix()).unwrap();
    let (a1, b1) = (topo.pod_ns("a1"), topo.pod_ns("b1"));
    let (a1_ip, b1_ip) = (topo.pod_ip("a1"), topo.pod_ip("b1"));
    redirect::install(&a1.path(), backend, &RedirectConfig::default()).unwrap();

    let outbound = listen(a1, Ipv4Addr::UNSPECIFIED, 15001);
    let inbound = listen(a1, Ipv4Addr::UNSPECIFIED, 15006);
    let hbone = listen(a1, Ipv4Addr::UNSPECIFIED, 15008);
    let app = listen(a1, Ipv4Addr::UNSPECIFIED, 8080);
    let remote = listen(b1, b1_ip, 9001);

    // Outbound from the pod lands on 15001 with the original destination recoverable.
    let target = SocketAddrV4::new(b1_ip, 9000);
    let mut c = connect_from(a1, target, None, None);
    let (mut s, _) = accept(&outbound);
    assert_eq!(original_dst(&s), target);
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // ztunnel's own sockets (mark 0x539) go out untouched and keep the pod's source address.
    let _c = connect_from(a1, SocketAddrV4::new(b1_ip, 9001), Some(0x539), None);
    let (_s, peer) = accept(&remote);
    assert_eq!(peer.ip(), a1_ip);

    // Inbound to any port goes to 15006, source preserved, original destination recoverable.
    let _c = connect_from(b1, SocketAddrV4::new(a1_ip, 8080), None, None);
    let (s, peer) = accept(&inbound);
    assert_eq!(peer.ip(), b1_ip);
    assert_eq!(original_dst(&s), SocketAddrV4::new(a1_ip, 8080));

    // HBONE port is not redirected.
    let _c = connect_from(b1, SocketAddrV4::new(a1_ip, 15008), None, None);
    accept(&hbone);

    // Kubelet probes (from 169.254.7.127 on the node) reach the app directly.
    let node = topo.node(NodeId::A);
    node.exec("ip", &["addr", "add", "169.254.7.127/32", "dev", "veth-a1"])
        .unwrap();
    let _c = connect_from(
        node,
        SocketAddrV4::new(a1_ip, 8080),
        None,
        Some(Ipv4Addr::new(169, 254, 7, 127)),
    );
    let (_s, peer) = accept(&app);
    assert_eq!(peer.ip(), Ipv4Addr::new(169, 254, 7, 127));

    // Source-preserving inbound, as ztunnel does it: a transparent socket with our mark
    // connects to the app from the remote client's address. The app's replies go to b1's
    // address; only the connmark + fwmark route brings them back to lo instead of the wire, so
    // without those rules this connect would time out.
    let transparent = run_in(a1, || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_mark(0x539).unwrap();
        s.set_ip_transparent_v4(true).unwrap();
        s.bind(&SocketAddrV4::new(b1_ip, 0).into()).unwrap();
        s.connect_timeout(&SocketAddrV4::new(a1_ip, 8080).into(), TIMEOUT)
            .map(|()| TcpStream::from(s))
    });
    let mut t = transparent.expect("transparent connect to the app");
    let (mut s, peer) = accept(&app);
    assert_eq!(peer.ip(), b1_ip, "app must see the original client");
    s.write_all(b"pong").unwrap();
    t.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // Removal restores plain routing: the same outbound connect now reaches b1 itself.
    redirect::uninstall(&a1.path(), backend, &RedirectConfig::default()).unwrap();
    let _c = connect_from(a1, SocketAddrV4::new(b1_ip, 9001), None, None);
    let (_s, peer) = accept(&remote);
    assert_eq!(peer.ip(), a1_ip);
}

#[test]
fn iptables_redirects_traffic() {
    traffic_is_redirected(Backend::Iptables);
}

#[test]
fn nft_redirects_traffic() {
    traffic_is_redirected(Backend::Nftables);
}

#[test]
fn detect_backend_prefers_nft_when_it_works() {
    let nft_works = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|o| o.status.success());
    let expected = if nft_works {
        Backend::Nftables
    } else {
        Backend::Iptables
    };
    assert_eq!(redirect::detect_backend(), expected);
}

/// Two SO_REUSEPORT listeners in `ns` (an old and a new ztunnel's), 32 clients connected and
/// waiting in the accept queues, then the old listener closes without accepting. Returns how
/// many clients were then served by the new listener and how many were reset.
fn close_one_of_two_listeners(ns: &Netns) -> (usize, usize) {
    let port = 15001;
    let listener = || {
        run_in(ns, || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into())
                .unwrap();
            s.listen(128).unwrap();
            TcpListener::from(s)
        })
    };
    let (old, new) = (listener(), listener());
    let mut clients: Vec<TcpStream> = run_in(ns, || {
        (0..32)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
            .collect()
    });
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    drop(old);
    new.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        match new.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                s.write_all(b"y").unwrap();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let (mut served, mut reset) = (0, 0);
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(1) => served += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
            other => panic!("client: {other:?}"),
        }
    }
    (served, reset)
}

#[test]
fn a_closing_listener_hands_its_queue_to_its_successor_once_captured() {
    let ns = Netns::create(&format!("{}-p", unique_prefix())).unwrap();
    // The kernel's default: what queued on the closed listener is reset (this is what an old
    // ztunnel's exit did to connections it had not accepted yet).
    let (_, reset) = close_one_of_two_listeners(&ns);
    assert!(reset > 0, "no client was reset without tcp_migrate_req");
    redirect::install(&ns.path(), Backend::Nftables, &RedirectConfig::default()).unwrap();
    assert_eq!(close_one_of_two_listeners(&ns), (32, 0));
}

#[test]
fn listener_migration_can_be_enabled_without_touching_the_rules() {
    // A pod captured by an agent that predates the sysctl: the agent adds it alone.
    let ns = Netns::create(&format!("{}-p", unique_prefix())).unwrap();
    let before = snapshot(&ns);
    redirect::enable_listener_migration(&ns.path()).unwrap();
    assert!(redirect::listener_migration_enabled(&ns.path()).unwrap());
    assert_eq!(snapshot(&ns), before);
    let err = redirect::enable_listener_migration(Path::new("/nonexistent/netns")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
}
