//! The C allocator's settings for a proxy's memory pattern.
//!
//! Why: a bulk HBONE stream allocates and frees a buffer of 256 KiB or more per HTTP/2 frame
//! (the copy's read buffer, h2's frame buffer, rustls' records). glibc serves blocks of that
//! size with mmap and trims freed memory above 128 KiB back to the kernel, so every frame paid
//! for fresh pages: page faults, zeroing and unmapping were ~15 % of both ztunnels' CPU in a
//! profile of one bulk stream (issue 12). Keeping blocks up to 1 MiB in the heap and up to
//! 8 MiB of free memory per arena before trimming stops that churn.
//!
//! The price would be memory kept after a burst, for good: glibc only ever returns the top of
//! an arena, and free pages in the middle (a burst of connections freed in another order than
//! allocated) stay resident. So every [`RELEASE_EVERY`] a thread hands all free pages back
//! (`malloc_trim`), as jemalloc's decay does for upstream's ztunnel: a burst costs page faults
//! once per period, not per frame, and RSS returns to what is in use (issue 13's soak).
//!
//! One arena, not one per contending thread: with several, memory a burst grew in each stays
//! spread out, and connections made afterwards land all over it. In the mesh bench, RSS with
//! 1,000 open connections after the bulk and connection runs fell from ~40-46 MiB to 28 MiB
//! (both nodes) with one arena; CPU per GB and per connection did not move. glibc's per-thread
//! cache still serves small blocks without the arena's lock.
//!
//! Operators who set glibc's own variables keep theirs, and no thread is started.

use std::time::Duration;

/// How often free memory is returned to the kernel.
const RELEASE_EVERY: Duration = Duration::from_secs(10);

/// Applies the settings unless `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` is set (glibc has then read them), other than
/// by [`crate::memcpy`]. Call before the runtime starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const OPERATOR_SET: [&str; 4] = [
            "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "GLIBC_TUNABLES",
        ];
        let operator_set = |v: &&str| {
            std::env::var_os(v).is_some()
                && !(*v == "GLIBC_TUNABLES" && crate::memcpy::tunables_are_ours())
        };
        if OPERATOR_SET.iter().any(operator_set) {
            return;
        }
        // SAFETY: mallopt only changes the allocator's parameters; it is called once, before
        // any other thread exists. A refusal (returns 0) leaves glibc's defaults in force.
        unsafe {
            nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1024 * 1024);
            nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
        // Off the runtime's workers: a trim walks every arena and may take a few milliseconds
        // on a large heap. Without the thread (it could not be started) only RSS suffers.
        let _ = std::thread::Builder::new()
            .name("malloc-release".into())
            .stack_size(64 * 1024)
            .spawn(|| loop {
                std::thread::sleep(RELEASE_EVERY);
                release_free_memory();
            });
    }
}

/// Hands every free page of every arena back to the kernel.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe (it takes each arena's lock) and only releases pages
    // no allocation uses.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_held_below_a_live_block_is_returned() {
        const BLOCK: usize = 32 * 1024; // below glibc's mmap threshold: heap memory
        const FREED: usize = 64 * 1024 * 1024;
        let mut blocks: Vec<Vec<u8>> = (0..FREED / BLOCK).map(|_| vec![1u8; BLOCK]).collect();
        // The last block stays: the freed ones sit below it, where free() never trims.
        let keep = blocks.pop();
        drop(blocks);
        let before = rss_bytes();
        super::release_free_memory();
        let after = rss_bytes();
        drop(keep);
        assert!(
            before.saturating_sub(after) > (FREED / 2) as u64,
            "RSS {before} -> {after} bytes after releasing {FREED} freed bytes"
        );
    }
}
