//! ZDS over real SOCK_SEQPACKET sockets with real netns fds: the client against our server, the
//! client against a hand-driven hostile agent, and our server against a hand-driven ztunnel.

mod client;
mod hostile;
mod server;
mod support;
