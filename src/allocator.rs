//! The C allocator's settings for a proxy's memory pattern.
//!
//! Why: a bulk HBONE stream allocates and frees a buffer of 256 KiB or more per HTTP/2 frame
//! (the copy's read buffer, h2's frame buffer, rustls' records). glibc serves blocks of that
//! size with mmap and trims freed memory above 128 KiB back to the kernel, so every frame paid
//! for fresh pages: page faults, zeroing and unmapping were ~15 % of both ztunnels' CPU in a
//! profile of one bulk stream (issue 12). Keeping blocks up to 1 MiB in the heap and up to
//! 8 MiB of free memory per arena before trimming stops that churn, at the price of that much
//! memory kept after a burst. Operators who set glibc's own variables keep theirs.

/// Applies the settings unless `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or
/// `GLIBC_TUNABLES` is set (glibc has then read them). Call before the runtime starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const OPERATOR_SET: [&str; 3] = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "GLIBC_TUNABLES",
        ];
        if OPERATOR_SET.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        // SAFETY: mallopt only changes the allocator's parameters; it is called once, before
        // any other thread exists. A refusal (returns 0) leaves glibc's defaults in force.
        unsafe {
            nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1024 * 1024);
            nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
        }
    }
}
