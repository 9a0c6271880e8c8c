//! A stand-in node agent: the real [`PluginServer`] with an [`Enroller`] whose answers depend on
//! the pod's name, recording every request it sees.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cni_agent::protocol::{EnrollRequest, ReleaseRequest, Request};
use cni_agent::server::{Decision, Enroller, PluginServer};

#[derive(Default)]
pub struct ScriptedEnroller {
    pub seen: Mutex<Vec<Request>>,
}

impl Enroller for ScriptedEnroller {
    async fn enroll(&self, req: EnrollRequest) -> Result<Decision, String> {
        let name = req.pod.name.clone();
        self.seen.lock().unwrap().push(Request::Add(req));
        match name.as_str() {
            "not-mesh" => Ok(Decision::NotMeshed),
            "mesh-fail" => Err("could not install redirection: netns vanished".into()),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Decision::Enrolled)
            }
            _ => Ok(Decision::Enrolled),
        }
    }

    async fn release(&self, req: ReleaseRequest) {
        self.seen.lock().unwrap().push(Request::Del(req));
    }
}

pub struct Agent {
    pub socket: PathBuf,
    pub enroller: Arc<ScriptedEnroller>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/cni-plugin.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let enroller = Arc::new(ScriptedEnroller::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let _guard = runtime.enter();
            PluginServer::bind(&socket, enroller.clone()).unwrap()
        };
        let served = runtime.spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Agent {
            socket,
            enroller,
            stop: Some(stop),
            served: Some(served),
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    pub fn seen(&self) -> Vec<Request> {
        self.enroller.seen.lock().unwrap().clone()
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().unwrap()
    }
}

impl Agent {
    /// Stops the server and waits until it has cleaned up.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(served), Some(rt)) = (self.served.take(), self.runtime.as_ref()) {
            let _ = rt.block_on(served);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
