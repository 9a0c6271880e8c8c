//! ZDS, the protocol by which the node CNI agent hands pods (uid, identity, netns fd) to ztunnel;
//! wire-compatible with upstream Istio's `istio.workload.zds`.
//!
//! The agent listens on an AF_UNIX `SOCK_SEQPACKET` socket ([`DEFAULT_SOCKET_PATH`]) and ztunnel
//! connects, so either can restart on its own. Each datagram is one protobuf message. ztunnel says
//! Hello; the agent replays every pod it knows as a snapshot (Add with the netns fd, or Keep),
//! then SnapshotSent; after that Add/Del flow as pods come and go. Every request gets one Ack
//! (with an error string for a nack) before the next is sent.
//!
//! - ztunnel side: [`run_client`] drives a [`WorkloadHandler`]; the rules live in an I/O-free
//!   state machine (`protocol.rs`) so they are tested without sockets.
//! - agent side: [`ZdsServer`].
//! - [`raw`] and [`proto`] give tests and tools the bare socket and wire types, to play a peer
//!   that breaks the rules.

mod client;
pub mod proto;
mod protocol;
mod seqpacket;
mod server;

pub use client::{run_client, WorkloadHandler, DEFAULT_SOCKET_PATH};
pub use protocol::{Event, Protocol, ProtocolError, WorkloadInfo};
pub use server::{ZdsError, ZdsServer};

/// Bare seqpacket sockets with fd passing, for tests and tools that speak ZDS by hand.
pub mod raw {
    pub use super::seqpacket::{Datagram, SeqPacket, SeqPacketListener, MAX_DATAGRAM};
}
