//! A scripted ztunnel: connects to the agent's ZDS socket, says Hello, records every request
//! (with the inode of each netns fd it is handed) and acks or nacks as told. It can drop its
//! connection and reconnect, as a restarting ztunnel does.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshtunnel::zds::raw::SeqPacket;
use meshtunnel::zds::{proto, Event, Protocol};
use prost::Message;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZEvent {
    Connected,
    Add { uid: String, sa: String, inode: u64 },
    Del { uid: String },
    Snapshot { uids: Vec<String> },
}

#[derive(Clone, Default)]
struct Shared {
    events: Arc<Mutex<Vec<ZEvent>>>,
    /// `Some(reason)`: nack every Add with it.
    nack: Arc<Mutex<Option<String>>>,
    /// (uid, netns name): when that pod's Add arrives, delete the named netns before acking,
    /// so it vanishes between ztunnel's ack and the agent's rule install.
    vanish: Arc<Mutex<Option<(String, String)>>>,
}

pub struct FakeZtunnel {
    shared: Shared,
    /// Bumping it makes the peer drop its connection and connect again.
    reconnect: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeZtunnel {
    pub fn start(path: &Path) -> FakeZtunnel {
        let shared = Shared::default();
        let (reconnect, reconnect_rx) = watch::channel(0);
        let (stop, stop_rx) = watch::channel(false);
        let (s, p) = (shared.clone(), path.to_owned());
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(run(p, s, reconnect_rx, stop_rx));
        });
        FakeZtunnel {
            shared,
            reconnect,
            stop,
            thread: Some(thread),
        }
    }

    pub fn events(&self) -> Vec<ZEvent> {
        self.shared.events.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.shared.events.lock().unwrap().clear();
    }

    pub fn nack_adds(&self, reason: Option<&str>) {
        *self.shared.nack.lock().unwrap() = reason.map(str::to_owned);
    }

    pub fn delete_netns_on_add(&self, uid: &str, netns_name: &str) {
        *self.shared.vanish.lock().unwrap() = Some((uid.to_owned(), netns_name.to_owned()));
    }

    pub fn reconnect(&self) {
        self.reconnect.send_modify(|n| *n += 1);
    }

    pub fn got_add(&self, uid: &str) -> Option<ZEvent> {
        self.events()
            .into_iter()
            .find(|e| matches!(e, ZEvent::Add { uid: u, .. } if u == uid))
    }

    pub fn got_del(&self, uid: &str) -> bool {
        self.events()
            .iter()
            .any(|e| matches!(e, ZEvent::Del { uid: u } if u == uid))
    }

    pub fn snapshots(&self) -> Vec<Vec<String>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ZEvent::Snapshot { uids } => Some(uids),
                _ => None,
            })
            .collect()
    }
}

impl Drop for FakeZtunnel {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    path: PathBuf,
    shared: Shared,
    mut reconnect: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let sock = loop {
            if *stop.borrow() {
                return;
            }
            match SeqPacket::connect(&path) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        reconnect.borrow_and_update();
        tokio::select! {
            _ = serve(&sock, &shared) => {}
            _ = reconnect.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        drop(sock);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve(sock: &SeqPacket, shared: &Shared) {
    let hello = proto::ZdsHello {
        version: proto::ZdsVersion::V1 as i32,
    }
    .encode_to_vec();
    if sock.send(&hello, &[]).await.is_err() {
        return;
    }
    shared.events.lock().unwrap().push(ZEvent::Connected);
    let mut protocol = Protocol::new();
    loop {
        let Ok(d) = sock.recv().await else { return };
        if d.data.is_empty() {
            return;
        }
        let reply = match protocol.on_datagram(&d.data, d.fds.len()) {
            Ok(Event::Add { uid, info }) => {
                let inode = d
                    .fds
                    .first()
                    .map(|fd| {
                        std::fs::File::from(fd.try_clone().unwrap())
                            .metadata()
                            .unwrap()
                            .ino()
                    })
                    .unwrap_or(0);
                let vanish = shared.vanish.lock().unwrap().clone();
                if let Some((_, name)) = vanish.filter(|(u, _)| *u == uid) {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "del", &name])
                        .status();
                }
                shared.events.lock().unwrap().push(ZEvent::Add {
                    uid,
                    sa: info.service_account,
                    inode,
                });
                shared.nack.lock().unwrap().clone().map_or(Ok(()), Err)
            }
            Ok(Event::Del { uid }) => {
                shared.events.lock().unwrap().push(ZEvent::Del { uid });
                Ok(())
            }
            Ok(Event::Keep { .. }) => Ok(()),
            Ok(Event::SnapshotSent { present }) => {
                let mut uids: Vec<String> = present.into_iter().collect();
                uids.sort();
                shared
                    .events
                    .lock()
                    .unwrap()
                    .push(ZEvent::Snapshot { uids });
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        let ack = proto::WorkloadResponse {
            payload: Some(proto::workload_response::Payload::Ack(proto::Ack {
                error: reply.err().unwrap_or_default(),
            })),
        }
        .encode_to_vec();
        if sock.send(&ack, &[]).await.is_err() {
            return;
        }
    }
}
