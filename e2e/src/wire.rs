//! What crossed the wire between the nodes, read from a real packet capture (tshark), not
//! from ztunnel's own account of it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use test_support::{ChildGuard, Netns};

use crate::mesh::run_cmd;

pub struct Capture {
    child: ChildGuard,
    file: PathBuf,
}

/// One captured TCP segment with payload.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src_port: u16,
    pub dst_port: u16,
    pub len: usize,
    /// TLS record content types found in it (23 = application data).
    pub tls_types: Vec<u8>,
}

pub struct Summary {
    pub segments: Vec<Segment>,
    raw: Vec<u8>,
}

impl Capture {
    /// Starts capturing TCP on `iface` inside `ns` into `file`.
    ///
    /// The capture is dumpcap, the capture engine under tshark: tshark first loads every
    /// dissector, which took over 10 s on a loaded 2-core CI machine; dumpcap opens the
    /// interface in milliseconds. tshark only decodes the file afterwards.
    pub fn start(ns: &Netns, iface: &str, file: PathBuf) -> Result<Capture> {
        // A stale file would make the readiness check below pass before dumpcap is capturing.
        let _ = std::fs::remove_file(&file);
        let log = file.with_extension("log");
        let mut cmd = ns.command("dumpcap");
        cmd.args(["-q", "-B", "64", "-i", iface, "-f", "tcp", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("dumpcap's log file")?);
        let mut child = ns
            .spawn_command(cmd)
            .context("starting dumpcap (apt-get install tshark)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The pcapng header is written once the interface is open and the filter set.
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
            if let Some(status) = child.child_mut().try_wait()? {
                bail!(
                    "dumpcap on {iface} exited ({status}) before capturing: {}",
                    said()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dumpcap did not start capturing on {iface} in 30 s: {}",
                    said()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(Capture { child, file })
    }

    /// Stops the capture (SIGINT, so dumpcap flushes) and decodes it with tshark.
    pub fn stop(mut self) -> Result<Summary> {
        std::thread::sleep(Duration::from_millis(300));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.child_mut().try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run_cmd(Command::new("tshark").args(["-r"]).arg(&self.file).args([
            "-d",
            "tcp.port==15008,tls",
            "-Y",
            "tcp.len > 0",
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.len",
            "-e",
            "tls.record.content_type",
            // TLS 1.3 records after the handshake carry their type as "opaque type".
            "-e",
            "tls.record.opaque_type",
        ]))?;
        let segments = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split(';').collect();
                Some(Segment {
                    src_port: f.first()?.parse().ok()?,
                    dst_port: f.get(1)?.parse().ok()?,
                    len: f.get(2)?.parse().ok()?,
                    tls_types: f
                        .iter()
                        .skip(3)
                        .flat_map(|t| t.split(','))
                        .filter_map(|x| x.parse().ok())
                        .collect(),
                })
            })
            .collect();
        let raw = std::fs::read(&self.file)?;
        Ok(Summary { segments, raw })
    }
}

impl Summary {
    /// Segments with payload whose ports are not 15008 on either side.
    pub fn non_hbone(&self) -> Vec<&Segment> {
        self.segments
            .iter()
            .filter(|s| s.src_port != 15008 && s.dst_port != 15008)
            .collect()
    }

    pub fn payload_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// TLS application-data records seen.
    pub fn tls_app_records(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.tls_types.iter().filter(|t| **t == 23).count())
            .sum()
    }

    /// Whether `needle` appears anywhere in the captured bytes (a plaintext leak).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.raw.windows(needle.len()).any(|w| w == needle)
    }
}
