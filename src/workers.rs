//! The data path's threads: one single-threaded async runtime per worker.
//!
//! Each pod's listeners are opened once per worker (SO_REUSEPORT, so the kernel spreads
//! connections over them), and everything one accepted connection does runs on the worker that
//! accepted it: its policy check, dials, HBONE pool (one per worker), TLS and copy. With one
//! shared work-stealing runtime the task reading one socket and the task writing the other
//! drift to different threads, and every hand-off between them becomes a cross-CPU wake-up
//! (a futex or eventfd write, an inter-processor interrupt, a context switch). Envoy keeps
//! its connections on one worker each for the same reason.
//!
//! The control plane (xDS, CA, ZDS, admin, metrics) runs on the main thread's runtime, so a
//! large config push never delays a byte.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Handles to the worker runtimes. Cheap to clone; [`Workers::stop`] ends the threads.
#[derive(Clone)]
pub struct Workers {
    handles: Arc<[Handle]>,
    threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("len", &self.len()).finish()
    }
}

impl Workers {
    /// Starts `n` (at least 1) worker threads named `worker-<i>` (the
    /// kernel keeps 15 bytes of a thread's name).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || rt.block_on(stop.cancelled()))?,
            );
        }
        Ok(Workers {
            handles: handles.into(),
            threads: Arc::new(std::sync::Mutex::new(threads)),
            stop,
        })
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Ends the worker threads and waits for them; tasks still on them are dropped. Call it
    /// outside any runtime, after the proxies have drained.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_is_one_thread_of_its_own_and_stop_ends_them() {
        let w = Workers::start(3).unwrap();
        assert_eq!(w.len(), 3);
        let names: Vec<String> = w
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    // A task spawned from a task stays on the same thread.
                    let inner = tokio::spawn(async { std::thread::current().id() })
                        .await
                        .unwrap();
                    assert_eq!(inner, std::thread::current().id());
                    let _ = tx.send(std::thread::current().name().unwrap().to_owned());
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(names, ["worker-0", "worker-1", "worker-2"]);
        // A task still pending on a worker is dropped by the time `stop` returns.
        struct OnDrop(std::sync::mpsc::Sender<()>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (tx, dropped) = std::sync::mpsc::channel();
        let guard = OnDrop(tx);
        w.handles()[1].spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        w.stop();
        assert!(
            dropped.try_recv().is_ok(),
            "stop returned before the worker ended"
        );
    }

    #[test]
    fn at_least_one_worker() {
        let w = Workers::start(0).unwrap();
        assert_eq!(w.len(), 1);
        w.stop();
    }
}
