//! The node agent's end of [`crate::protocol`]: listens on the plugin socket and turns each request
//! into a call on an [`Enroller`], which the Kubernetes-watching agent provides.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::protocol::{encode, frame_len, EnrollRequest, ReleaseRequest, Reply, Request};

/// The plugin writes its request immediately after connecting; a peer that has not done so by
/// then is broken or hostile and should not hold a task.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent decided about a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The pod is for the mesh and its traffic is now captured.
    Enrolled,
    /// The pod is not for the mesh; it starts as it is.
    NotMeshed,
}

/// Decides about and enrols pods. Implemented by the node agent, which knows the pods' and
/// namespaces' labels; the server only carries requests to it.
pub trait Enroller: Send + Sync + 'static {
    /// Called on CNI ADD. `Err` fails the pod's sandbox creation (the runtime retries), so return
    /// it whenever a pod that belongs in the mesh could not be captured.
    fn enroll(&self, req: EnrollRequest) -> impl Future<Output = Result<Decision, String>> + Send;
    /// Called on CNI DEL, best effort: the plugin does not wait long and never fails on it.
    fn release(&self, req: ReleaseRequest) -> impl Future<Output = ()> + Send;
}

pub struct PluginServer<E> {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created, to recognise it at shutdown.
    identity: (u64, u64),
    enroller: Arc<E>,
}

impl<E: Enroller> PluginServer<E> {
    /// Binds `path`, replacing a socket left by an earlier agent (a restart or upgrade). Any other
    /// kind of file there is left alone and is an error. The socket is root-only: whoever can
    /// write to it can ask for pods to be enrolled.
    pub fn bind(path: &Path, enroller: Arc<E>) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(PluginServer {
            listener,
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
            enroller,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then removes the socket so plugins fail fast (and
    /// closed) instead of connecting to nothing — unless a newer agent has already bound its own
    /// socket at the path (an upgrade that starts the new pod before stopping the old one).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let enroller = self.enroller.clone();
                        tokio::spawn(handle(stream, enroller));
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning; live connections
                        // finishing will free descriptors.
                        tracing::warn!(error = %e, "accepting a plugin connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let still_ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn handle<E: Enroller>(mut stream: UnixStream, enroller: Arc<E>) {
    let request = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_request(&mut stream)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => {
            tracing::warn!(%why, "bad request on the plugin socket");
            let _ = reply(&mut stream, error_reply(format!("bad request: {why}"))).await;
            return;
        }
        Err(_) => {
            tracing::warn!("plugin connection sent no request in time");
            return;
        }
    };
    let answer = match request {
        Request::Add(req) => {
            tracing::info!(ns = %req.pod.namespace, pod = %req.pod.name, "CNI ADD");
            match enroller.enroll(req).await {
                Ok(Decision::Enrolled) => Reply {
                    mesh: true,
                    error: None,
                },
                Ok(Decision::NotMeshed) => Reply {
                    mesh: false,
                    error: None,
                },
                Err(e) => error_reply(e),
            }
        }
        Request::Del(req) => {
            tracing::info!(ns = %req.pod.namespace, pod = %req.pod.name, "CNI DEL");
            enroller.release(req).await;
            Reply {
                mesh: false,
                error: None,
            }
        }
    };
    if let Err(e) = reply(&mut stream, answer).await {
        // The plugin gave up waiting; it has already failed the ADD, and the runtime will retry.
        tracing::debug!(error = %e, "plugin left before the reply");
    }
}

fn error_reply(error: String) -> Reply {
    Reply {
        mesh: true,
        error: Some(error),
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading length: {e}"))?;
    let len = frame_len(header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading body: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("decoding request: {e}"))
}

async fn reply(stream: &mut UnixStream, answer: Reply) -> io::Result<()> {
    stream.write_all(&encode(&answer)).await?;
    stream.shutdown().await
}
