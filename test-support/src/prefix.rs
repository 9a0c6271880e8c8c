use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A short prefix ("mt" + 5 hex digits) unique to this call in this process run.
///
/// Seven characters leave room for a suffix inside IFNAMSIZ (15) should a caller name links after
/// it. The counter keeps calls within one process distinct; pid and clock keep processes distinct.
/// Candidates already used by a live namespace are skipped; the remaining race with another
/// process is why [`crate::Netns::create`] refuses to adopt an existing namespace.
pub fn unique_prefix() -> String {
    loop {
        let p = candidate();
        if !in_use(&p) {
            return p;
        }
    }
}

fn in_use(prefix: &str) -> bool {
    std::fs::read_dir("/var/run/netns")
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
        .unwrap_or(false)
}

fn candidate() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // FNV-1a over the inputs: cheap, dependency-free, and spreads the low bits well enough.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in (std::process::id() as u64)
        .to_le_bytes()
        .into_iter()
        .chain(nanos.to_le_bytes())
        .chain(n.to_le_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mt{:05x}", h & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_distinct() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_eq!(a.len(), 7);
        assert!(a.starts_with("mt"));
        assert_ne!(a, b);
    }
}
