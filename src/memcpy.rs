//! glibc's `memcpy` made fast on AMD CPUs, before anything else runs.
//!
//! Why: glibc before 2.39 copies blocks of a few KiB and up with `rep movsb`. On AMD Zen 3 and
//! Zen 4, `rep movsb` runs ~25 times slower when the destination lies a few bytes past the
//! source modulo 4 KiB (glibc bug 30994): 3.3 GB/s against 75-100 here. A bulk HBONE stream hit
//! that case on every TLS record: rustls copies each decrypted record out of its receive buffer
//! (from 5 bytes past its start, after the record header) into a new block, and glibc's heap
//! put that block 16 bytes past the receive buffer's page offset, every time. That one copy was
//! more than half of `memmove`'s samples, ~9 % of both ztunnels' CPU in a 1-stream profile
//! (issue 12); upstream's ztunnel escapes it by luck, jemalloc page-aligns both blocks.
//!
//! glibc 2.39 fixed it by copying with vector loops up to the L2 cache's size on AMD
//! (`glibc.cpu.x86_rep_movsb_threshold`). Older glibc (Debian 12 has 2.36) takes that setting
//! only from the `GLIBC_TUNABLES` environment variable, read by the dynamic loader when the
//! program starts. So a proxy started on an AMD CPU with an older glibc and no
//! `GLIBC_TUNABLES` sets it and executes itself again, once: same pid, arguments and
//! environment, before any thread, socket or log exists. An operator's own `GLIBC_TUNABLES`
//! is left alone.

use std::ffi::OsStr;

const TUNABLES: &str = "GLIBC_TUNABLES";

/// Re-executes the running binary with the setting when this machine needs it; returns when
/// it does not (or the re-execution failed: copies are then only slower). Call first in
/// `main`.
pub fn avoid_slow_rep_movsb() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        let machine = Machine {
            amd: cpu_is_amd(),
            glibc: glibc_version(),
            l2_bytes: l2_bytes(),
        };
        if let Some(value) = tunables_for(&machine, std::env::var_os(TUNABLES).as_deref()) {
            reexec_with(&value);
        }
    }
}

/// Whether `GLIBC_TUNABLES` holds only the setting [`avoid_slow_rep_movsb`] makes (so it is
/// not an operator's, whose settings the allocator tuning must then leave alone).
pub(crate) fn tunables_are_ours() -> bool {
    std::env::var(TUNABLES).is_ok_and(|v| is_ours(&v))
}

fn is_ours(value: &str) -> bool {
    value
        .strip_prefix(SETTING)
        .and_then(|rest| rest.strip_prefix('='))
        .is_some_and(|n| n.parse::<u64>().is_ok())
}

const SETTING: &str = "glibc.cpu.x86_rep_movsb_threshold";

#[derive(Debug, Clone, Copy)]
struct Machine {
    amd: bool,
    /// (major, minor); None when unknown.
    glibc: Option<(u32, u32)>,
    /// The L2 cache per core; 0 when the CPU does not say.
    l2_bytes: u64,
}

/// The `GLIBC_TUNABLES` value to restart with, or None to go on as started.
fn tunables_for(m: &Machine, current: Option<&OsStr>) -> Option<String> {
    if !m.amd || current.is_some() {
        return None;
    }
    match m.glibc {
        Some(v) if v >= (2, 39) => return None, // glibc does it itself
        None => return None,                    // not glibc as we know it
        _ => {}
    }
    // glibc 2.39's own choice: the L2 size (1 MiB on Zen 4, 512 KiB on Zen 3).
    let threshold = if m.l2_bytes > 0 {
        m.l2_bytes
    } else {
        1024 * 1024
    };
    Some(format!("{SETTING}={threshold}"))
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn reexec_with(value: &str) {
    use std::os::unix::process::CommandExt;
    // The binary's own path, not `/proc/self/exe`: the kernel names the process after the
    // file executed, and `ps`, `ss -p` and `pgrep ztunnel` would then show "exe". A binary
    // deleted since it started (an upgrade in place) is not restarted.
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if !exe.exists() {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    // `exec` only returns on failure; the process then goes on without the setting.
    let _ = std::process::Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .env(TUNABLES, value)
        .exec();
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn cpu_is_amd() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"AuthenticAMD"
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn l2_bytes() -> u64 {
    // SAFETY: CPUID leaf 0x8000_0000 exists on every x86_64 CPU and says whether the
    // extended leaf 0x8000_0006 (AMD's L2 description) does.
    #[allow(unused_unsafe)]
    unsafe {
        if std::arch::x86_64::__cpuid(0x8000_0000).eax < 0x8000_0006 {
            return 0;
        }
        u64::from(std::arch::x86_64::__cpuid(0x8000_0006).ecx >> 16) * 1024
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn glibc_version() -> Option<(u32, u32)> {
    // SAFETY: returns a pointer to a static NUL-terminated string such as "2.36".
    let v = unsafe { std::ffi::CStr::from_ptr(nix::libc::gnu_get_libc_version()) };
    parse_version(v.to_str().ok()?)
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN4: Machine = Machine {
        amd: true,
        glibc: Some((2, 36)),
        l2_bytes: 1024 * 1024,
    };

    #[test]
    fn an_amd_cpu_with_an_old_glibc_restarts_with_the_l2_size() {
        let v = tunables_for(&ZEN4, None).unwrap();
        assert_eq!(v, "glibc.cpu.x86_rep_movsb_threshold=1048576");
        assert!(is_ours(&v));
        let zen3 = Machine {
            l2_bytes: 512 * 1024,
            ..ZEN4
        };
        assert_eq!(
            tunables_for(&zen3, None).unwrap(),
            "glibc.cpu.x86_rep_movsb_threshold=524288"
        );
        let silent = Machine {
            l2_bytes: 0,
            ..ZEN4
        };
        assert!(tunables_for(&silent, None).unwrap().ends_with("=1048576"));
    }

    #[test]
    fn nothing_changes_elsewhere_or_once_set() {
        let intel = Machine { amd: false, ..ZEN4 };
        assert_eq!(tunables_for(&intel, None), None);
        let fixed_glibc = Machine {
            glibc: Some((2, 39)),
            ..ZEN4
        };
        assert_eq!(tunables_for(&fixed_glibc, None), None);
        let unknown = Machine {
            glibc: None,
            ..ZEN4
        };
        assert_eq!(tunables_for(&unknown, None), None);
        // Already restarted, or the operator's own: no loop, no override.
        let ours = tunables_for(&ZEN4, None).unwrap();
        assert_eq!(tunables_for(&ZEN4, Some(OsStr::new(&ours))), None);
        assert_eq!(
            tunables_for(&ZEN4, Some(OsStr::new("glibc.malloc.arena_max=2"))),
            None
        );
        assert!(!is_ours("glibc.malloc.arena_max=2"));
        assert!(!is_ours(
            "glibc.cpu.x86_rep_movsb_threshold=1:glibc.malloc.arena_max=2"
        ));
    }

    #[test]
    fn glibc_versions_parse() {
        assert_eq!(parse_version("2.36"), Some((2, 36)));
        assert_eq!(parse_version("2.39.9000"), Some((2, 39)));
        assert_eq!(parse_version("2.40-rc1"), Some((2, 40)));
        assert_eq!(parse_version("x"), None);
    }
}
