//! Looking inside both ztunnels while a workload runs, with `perf`.
//!
//! [`Counts`] (`MESHTUNNEL_BENCH_COUNTS=1`): what each ztunnel asks of the kernel, counted by
//! `perf stat` (system calls by name, context switches) and printed per unit of work (per
//! round trip, per connection, per MB). Counts, unlike times, do not move with the machine's
//! other load, so two implementations' counts compare even on a noisy machine. Counting every
//! system call slows both ztunnels (a 64 B round trip took ~550 µs instead of ~180), so a run
//! with counts gives counts only: its times and ratios mean nothing.
//!
//! [`perf_record`]: CPU samples with call graphs, for `perf report`.
//!
//! [`Watch`]: both around one phase of a bench, as the environment asks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whatever the environment asks to watch during one phase: [`Counts`]
/// (`MESHTUNNEL_BENCH_COUNTS`) and, for phases given a profile name, a profile into
/// `$MESHTUNNEL_BENCH_PERF/<name>.data`.
pub struct Watch {
    label: String,
    counts: Option<Counts>,
    perf: Option<Child>,
}

impl Watch {
    pub fn start(pids: [u32; 2], label: String, profile: Option<String>) -> Watch {
        let perf = profile.and_then(|name| {
            let dir = std::env::var("MESHTUNNEL_BENCH_PERF").ok()?;
            Some(perf_record(&format!("{dir}/{name}.data"), pids))
        });
        Watch {
            label,
            counts: Counts::start(pids),
            perf,
        }
    }

    /// Stops watching; counts are printed per `units` of `unit`.
    pub fn end(self, units: f64, unit: &str) {
        if let Some(p) = self.perf {
            stop(p);
        }
        if let Some(c) = self.counts {
            c.finish(&self.label, units, unit);
        }
    }
}

/// `perf stat` attached to both ztunnels, one per node.
pub struct Counts {
    perf: Vec<(Child, PathBuf)>,
}

const EVENTS: &str = "context-switches,cpu-migrations,raw_syscalls:sys_enter,syscalls:sys_enter_*";

impl Counts {
    /// Starts counting when `MESHTUNNEL_BENCH_COUNTS` is set.
    pub fn start(pids: [u32; 2]) -> Option<Counts> {
        std::env::var_os("MESHTUNNEL_BENCH_COUNTS")?;
        let perf = pids
            .iter()
            .map(|pid| {
                let out = std::env::temp_dir().join(format!(
                    "meshtunnel-counts-{}-{pid}.csv",
                    std::process::id()
                ));
                let child = Command::new("perf")
                    .args(["stat", "-x,", "-e", EVENTS, "-o"])
                    .arg(&out)
                    .arg("-p")
                    .arg(pid.to_string())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("perf (MESHTUNNEL_BENCH_COUNTS needs it)");
                (child, out)
            })
            .collect();
        // perf attaches to every thread before it counts.
        std::thread::sleep(Duration::from_millis(300));
        Some(Counts { perf })
    }

    /// Stops counting and prints each event above a tenth per unit, node A / node B, per
    /// `units` of `unit` (e.g. 20,000 "round trip").
    pub fn finish(self, label: &str, units: f64, unit: &str) {
        let mut per_node = Vec::new();
        for (child, out) in self.perf {
            stop(child);
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let _ = std::fs::remove_file(&out);
            per_node.push(parse(&text));
        }
        let mut names: Vec<&String> = per_node.iter().flat_map(|m| m.keys()).collect();
        names.sort();
        names.dedup();
        let per = |m: &std::collections::HashMap<String, f64>, n: &String| {
            m.get(n).copied().unwrap_or(0.0) / units.max(1.0)
        };
        let mut rows: Vec<(String, f64, f64)> = names
            .into_iter()
            .map(|n| (n.clone(), per(&per_node[0], n), per(&per_node[1], n)))
            .filter(|(_, a, b)| a + b >= 0.1)
            .collect();
        rows.sort_by(|x, y| (y.1 + y.2).total_cmp(&(x.1 + x.2)));
        let cells: Vec<String> = rows
            .iter()
            .map(|(n, a, b)| format!("{n} {a:.1}/{b:.1}"))
            .collect();
        eprintln!(
            "    {label}, per {unit} (node A/B, {units:.0} {unit}s): {}",
            cells.join(", ")
        );
    }
}

/// `perf stat -x,` lines: `count,unit,event,...`; the event's `syscalls:sys_enter_` prefix
/// dropped, so a row reads as the call's name.
fn parse(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let count: f64 = f.next()?.trim().parse().ok()?;
            let event = f.nth(1)?;
            let name = event
                .strip_prefix("syscalls:sys_enter_")
                .or_else(|| {
                    event
                        .strip_prefix("raw_syscalls:sys_enter")
                        .map(|_| "syscalls")
                })
                .unwrap_or(event);
            Some((name.to_owned(), count))
        })
        .collect()
}

/// `perf record -e cpu-clock -g` of both ztunnels into `out`, until the child is sent SIGINT
/// (see [`stop`]). `MESHTUNNEL_BENCH_PERF_ARGS` replaces `-e cpu-clock -g`, e.g. with
/// `-e cpu-clock --call-graph dwarf` for callers of code built without frame pointers (libc's
/// `memmove`).
pub fn perf_record(out: &str, pids: [u32; 2]) -> Child {
    let args = std::env::var("MESHTUNNEL_BENCH_PERF_ARGS")
        .unwrap_or_else(|_| "-e cpu-clock -g".to_owned());
    let child = Command::new("perf")
        .arg("record")
        .args(args.split_whitespace())
        .args(["-o", out, "-p"])
        .arg(format!("{},{}", pids[0], pids[1]))
        .spawn()
        .expect("perf");
    std::thread::sleep(Duration::from_millis(500));
    child
}

/// Ends a `perf` child the way Ctrl-C would, so it writes its output.
pub fn stop(mut perf: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = perf.wait();
}
