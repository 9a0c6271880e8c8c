//! Async AF_UNIX `SOCK_SEQPACKET` sockets carrying fds in `SCM_RIGHTS`: the only I/O of the ZDS
//! protocol. Public (via `zds::raw`) so tests and tools can play a hostile peer.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Receive buffer: ZDS messages are < 1 KiB, so anything that does not fit is a protocol error.
pub const MAX_DATAGRAM: usize = 4096;

/// The kernel never passes more than SCM_MAX_FD (253) fds in one message. Room for all of them means
/// the kernel never truncates the fd list, so every fd it installs in our table reaches an `OwnedFd`
/// and gets closed (nix refuses to iterate control messages once MSG_CTRUNC is set).
const MAX_FDS: usize = 253;

fn new_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Panics outside a tokio runtime (as every tokio I/O type does).
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and unchanged for its lifetime.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// The payload; empty means the peer closed the connection. SEQPACKET cannot tell a
    /// zero-length message from EOF, and the only ZDS message that encodes to zero bytes is a
    /// `WorkloadRequest` without payload, which is invalid anyway.
    pub data: Vec<u8>,
    /// Fds passed with it, already owned so that every path closes them.
    pub fds: Vec<OwnedFd>,
}

/// A connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

impl SeqPacket {
    /// Connects to a listening socket at `path`. Needs a tokio runtime.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = new_socket()?;
        let addr = UnixAddr::new(path)?;
        // A UNIX-domain connect completes immediately or fails (EAGAIN when the backlog is full);
        // either way the caller's retry loop handles it.
        connect(fd.as_raw_fd(), &addr)?;
        Self::from_owned(fd)
    }

    /// Wraps an already connected nonblocking seqpacket socket.
    pub fn from_owned(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Sends one datagram, with `fds` in `SCM_RIGHTS` when not empty.
    pub async fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [IoSlice::new(data)];
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|inner| {
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
                // MSG_NOSIGNAL: a peer that went away must be an EPIPE error, not a SIGPIPE.
                let n =
                    sendmsg::<()>(inner.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
                if n != data.len() {
                    return Err(io::Error::other(format!(
                        "short seqpacket send: {n} of {} bytes",
                        data.len()
                    )));
                }
                Ok(())
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram. A datagram longer than [`MAX_DATAGRAM`] or a truncated fd list is an
    /// error (its fds, if any were installed, are closed).
    pub async fn recv(&self) -> io::Result<Datagram> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| recv_now(inner.get_ref().as_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

fn recv_now(fd: BorrowedFd<'_>) -> io::Result<Datagram> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        // On MSG_CTRUNC nix will not iterate; see MAX_FDS for why that cannot leak in practice.
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these fds in our table and nothing else
                    // refers to them; owning them at once is what guarantees they get closed.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
                    );
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("datagram longer than {MAX_DATAGRAM} bytes"),
        ));
    }
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control data truncated (too many fds?)",
        ));
    }
    buf.truncate(bytes);
    Ok(Datagram { data: buf, fds })
}

/// A listening `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: AsyncFd<OwnedFd>,
}

impl SeqPacketListener {
    /// Binds and listens at `path`, replacing a stale socket file left by a previous run (the
    /// agent owns this path; a leftover file would make bind fail with EADDRINUSE forever).
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = new_socket()?;
        let addr = UnixAddr::new(path)?;
        bind(fd.as_raw_fd(), &addr)?;
        listen(&fd, Backlog::MAXCONN)?;
        Ok(Self {
            fd: register(fd, Interest::READABLE)?,
        })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<SeqPacket> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|inner| {
                let raw = accept4(
                    inner.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )?;
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            });
            match res {
                Ok(r) => return SeqPacket::from_owned(r?),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::socketpair;

    fn pair() -> (SeqPacket, SeqPacket) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        (
            SeqPacket::from_owned(a).expect("wrap"),
            SeqPacket::from_owned(b).expect("wrap"),
        )
    }

    #[tokio::test]
    async fn datagram_with_fds_round_trips() {
        let (a, b) = pair();
        let f1 = std::fs::File::open("/proc/self/ns/net").expect("open netns");
        let f2 = std::fs::File::open("/dev/null").expect("open null");
        a.send(b"abc", &[f1.as_fd(), f2.as_fd()])
            .await
            .expect("send");
        let d = b.recv().await.expect("recv");
        assert_eq!(d.data, b"abc");
        assert_eq!(d.fds.len(), 2);
    }

    #[tokio::test]
    async fn oversized_datagram_is_an_error() {
        let (a, b) = pair();
        a.send(&[7u8; MAX_DATAGRAM + 1], &[]).await.expect("send");
        let err = b.recv().await.expect_err("must reject");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn peer_close_reads_as_empty() {
        let (a, b) = pair();
        drop(a);
        let d = b.recv().await.expect("recv");
        assert!(d.data.is_empty() && d.fds.is_empty());
    }
}
