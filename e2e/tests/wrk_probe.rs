//! Diagnostic for issue 12's connection-setup collapse (ignored: needs `wrk` and `nginx`
//! from Debian's `wrk` and `nginx-light`, and is a measurement, not a pass/fail test):
//! `wrk -c8 -H 'Connection: close'` from a1 to nginx in b1 through both ztunnels, in 4 s
//! windows, printing requests/s and the TIME_WAIT counts in a1 and b1 after each window.
//!
//! `PROBE_RELEASE=1` uses target/release binaries, `PROBE_WINDOWS=N` sets the windows,
//! `PROBE_LOG` the ztunnels' RUST_LOG. Run:
//! `PROBE_RELEASE=1 cargo test -p meshtunnel-e2e --test wrk_probe -- --ignored --nocapture`.
//!
//! What it showed (release, 2 loaded cores): ~3-5k/s until b1 holds ~14,000 TIME_WAIT
//! sockets, all nginx's (local b1:8080, remote a1's IP and one parity of the ephemeral
//! ports), then ~300-900/s until they expire ~60 s later. Setting IP_BIND_ADDRESS_NO_PORT on
//! the source-preserving socket did not change it.
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::NodeId;

#[test]
#[ignore]
fn wrk_probe() {
    let release = std::env::var("PROBE_RELEASE").is_ok();
    let mesh = Mesh::start(MeshOptions {
        log_level: std::env::var("PROBE_LOG")
            .unwrap_or("warn,h2::proto::streams::streams=debug".into()),
        release_binary: release,
        ..MeshOptions::default()
    })
    .unwrap();
    let dir = mesh.dir.path().join("nginx");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("body"), vec![b'x'; 1024]).unwrap();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/logs/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         server {{ listen 8080; location / {{ root {d}; try_files /body =404; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let _nginx = mesh
        .pod_ns("b1")
        .spawn("nginx", &["-c", dir.join("nginx.conf").to_str().unwrap()])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let url = format!("http://{}:8080/", mesh.pod_ip("b1"));
    for w in 0..std::env::var("PROBE_WINDOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
    {
        let out = mesh
            .pod_ns("a1")
            .exec(
                "wrk",
                &["-t2", "-c8", "-d4s", "-H", "Connection: close", &url],
            )
            .unwrap();
        let rps = out
            .lines()
            .find(|l| l.contains("Requests/sec"))
            .unwrap_or("?")
            .to_owned();
        let errs = out
            .lines()
            .find(|l| l.contains("Socket errors"))
            .unwrap_or("")
            .to_owned();
        let count = |pod: &str, state: &str| {
            mesh.pod_ns(pod)
                .exec("ss", &["-tanH", "state", state])
                .map(|o| o.lines().count())
                .unwrap_or(0)
        };
        eprintln!(
            "  a1: tw={} synsent={} estab={} | b1: tw={} synsent={} synrecv={} estab={} closewait={} lastack={}",
            count("a1", "time-wait"), count("a1", "syn-sent"), count("a1", "established"),
            count("b1", "time-wait"), count("b1", "syn-sent"), count("b1", "syn-recv"),
            count("b1", "established"), count("b1", "close-wait"), count("b1", "last-ack")
        );
        if w == 7 {
            let tw = mesh
                .pod_ns("b1")
                .exec("ss", &["-tanH", "state", "time-wait"])
                .unwrap_or_default();
            let sample: Vec<&str> = tw.lines().take(4).collect();
            let local_8080 = tw
                .lines()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|a| a.ends_with(":8080"))
                })
                .count();
            eprintln!(
                "  b1 TW sample: {sample:?}; with local :8080: {local_8080} of {}",
                tw.lines().count()
            );
        }
        let log = mesh.logs(NodeId::A) + &mesh.logs(NodeId::B);
        eprintln!(
            "window {w}: {rps} {errs} | too-many-small: {} goaway-lines: {}",
            log.matches("too many small DATA frames").count(),
            log.matches("GOAWAY").count() + log.matches("go_away").count()
        );
    }
    let log = mesh.logs(NodeId::A);
    eprintln!("--- A tail ---\n{}", &log[log.len().saturating_sub(3000)..]);
}
