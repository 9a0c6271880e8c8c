//! `process_*` metrics in the Prometheus client convention, read from /proc at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub(super) struct ProcessCollector {
    ticks_per_sec: f64,
    page_size: u64,
    /// Boot time (seconds since the epoch): process start times in /proc are relative to it.
    boot_time: Option<u64>,
}

/// The fields of /proc/self/stat we report.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Stat {
    pub cpu_ticks: u64,
    pub threads: i64,
    pub start_ticks: u64,
    pub vsize: u64,
    pub rss_pages: u64,
}

/// Parses /proc/<pid>/stat. The command name may contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub(super) fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state) of proc(5).
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: num(14)? + num(15)?,
        threads: f.get(20 - 3)?.parse().ok()?,
        start_ticks: num(22)?,
        vsize: num(23)?,
        rss_pages: num(24)?,
    })
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(var: nix::unistd::SysconfVar, fallback: i64) -> i64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => v,
        _ => fallback,
    }
}

impl ProcessCollector {
    pub fn new() -> Self {
        ProcessCollector {
            ticks_per_sec: sysconf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64,
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096) as u64,
            boot_time: boot_time(),
        }
    }
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl Into<f64>,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v.into());
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A /proc read failing (it should not) leaves the metric out rather than failing the scrape.
        if let Some(st) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            let c = ConstCounter::new(st.cpu_ticks as f64 / self.ticks_per_sec);
            c.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                (st.rss_pages * self.page_size) as f64,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                st.vsize as f64,
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "Number of OS threads",
                st.threads as f64,
            )?;
            if let Some(boot) = self.boot_time {
                gauge(
                    &mut enc,
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch in seconds",
                    boot as f64 + st.start_ticks as f64 / self.ticks_per_sec,
                )?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as f64,
            )?;
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors",
                soft as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_paren() {
        let line = "4242 (z (t) un) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 123456 987654321 2048 18446744073709551615";
        let st = parse_stat(line).unwrap();
        assert_eq!(
            st,
            Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123456,
                vsize: 987654321,
                rss_pages: 2048,
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none());
    }

    #[test]
    fn own_process_is_readable() {
        let st = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(st.rss_pages > 0 && st.threads >= 1);
        assert!(boot_time().is_some());
    }
}
