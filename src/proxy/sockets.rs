//! The SocketFactory seam: every socket a proxy opens comes from a factory, so the same proxy
//! code serves a pod (sockets made inside its network namespace) and plain host tests.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub trait SocketFactory: Send + Sync + 'static {
    /// A fresh non-blocking TCP socket, in whatever namespace and with whatever mark this
    /// factory stands for.
    fn tcp_socket(&self, v6: bool) -> io::Result<Socket>;

    /// A listening socket on `addr` (SO_REUSEPORT, so a restarted ztunnel can bind beside a
    /// draining one).
    fn listener(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let s = self.tcp_socket(addr.is_ipv6())?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            s.set_only_v6(false)?;
        }
        s.bind(&SockAddr::from(addr))?;
        s.listen(1024)?;
        TcpListener::from_std(std::net::TcpListener::from(s))
    }
}

/// Sockets in ztunnel's own namespace, optionally marked (tests, and node-level listeners).
pub struct PlainSocketFactory {
    pub mark: Option<u32>,
}

impl SocketFactory for PlainSocketFactory {
    fn tcp_socket(&self, v6: bool) -> io::Result<Socket> {
        new_tcp_socket(v6, self.mark)
    }
}

/// A non-blocking, close-on-exec TCP socket, marked when asked.
pub fn new_tcp_socket(v6: bool, mark: Option<u32>) -> io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    Ok(s)
}

/// How long a TCP connect may take and how a silent peer is detected, for every socket the
/// proxies open or accept. Defaults are upstream ztunnel's (10 s connect; keepalive after
/// 180 s idle, every 180 s, 9 probes), so a hung peer releases its resources in bounded time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    pub connect_timeout: Duration,
    /// None: no TCP keepalive.
    pub keepalive: Option<Keepalive>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub time: Duration,
    pub interval: Duration,
    pub retries: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Keepalive {
                time: Duration::from_secs(180),
                interval: Duration::from_secs(180),
                retries: 9,
            }),
        }
    }
}

impl SocketOptions {
    /// Turns keepalive on for `socket` (a listener passes it on to the sockets it accepts).
    pub fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        if let Some(k) = self.keepalive {
            let ka = TcpKeepalive::new()
                .with_time(k.time)
                .with_interval(k.interval)
                .with_retries(k.retries);
            socket.set_tcp_keepalive(&ka)?;
        }
        Ok(())
    }
}

/// [`connect_with`] and the default [`SocketOptions`].
pub async fn connect(
    factory: &dyn SocketFactory,
    dst: SocketAddr,
    spoof_src: Option<IpAddr>,
) -> io::Result<TcpStream> {
    connect_with(factory, dst, spoof_src, &SocketOptions::default()).await
}

/// Connects to `dst`, failing with `TimedOut` after `opts.connect_timeout` (a peer that
/// drops SYNs would otherwise hold the caller for the kernel's ~2 min of retries). With
/// `spoof_src`, the socket is transparent and bound to that address, so the destination app
/// sees the original client as its peer (source preservation).
pub async fn connect_with(
    factory: &dyn SocketFactory,
    dst: SocketAddr,
    spoof_src: Option<IpAddr>,
    opts: &SocketOptions,
) -> io::Result<TcpStream> {
    let s = factory.tcp_socket(dst.is_ipv6())?;
    s.set_tcp_nodelay(true)?;
    opts.apply(SockRef::from(&s))?;
    if let Some(src) = spoof_src.filter(|s| s.is_ipv6() == dst.is_ipv6()) {
        if dst.is_ipv6() {
            s.set_ip_transparent_v6(true)?;
        } else {
            s.set_ip_transparent_v4(true)?;
        }
        defer_port_choice(&s);
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(s));
    match tokio::time::timeout(opts.connect_timeout, sock.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect to {dst} timed out after {:?}",
                opts.connect_timeout
            ),
        )),
    }
}

/// IP_BIND_ADDRESS_NO_PORT: the source port of a socket bound to the client's address is
/// chosen at connect, per destination, instead of at bind from the ports free for that address
/// across every destination. Without it one client pod's connections to all the apps of a pod
/// shared one ephemeral range (~28k ports, each held 60 s in TIME-WAIT after the app side
/// closed): ~470 connections/s in all, where the client talking directly gets that per
/// destination; the soak ran into it as resets. Best effort: an old kernel binds as before.
fn defer_port_choice(s: &Socket) {
    use std::os::fd::AsRawFd;
    let on: nix::libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the size given; the kernel only
    // reads it. Applies to IPv6 sockets too (same option, IPPROTO_IP level).
    unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_IP,
            nix::libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        );
    }
}

/// The destination the app originally asked for, before the pod's REDIRECT rule sent the
/// connection to us; the local address when the connection was not redirected.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr()?;
    let fd = stream.as_fd();
    let found = if local.is_ipv4() {
        getsockopt(&fd, sockopt::OriginalDst).map(|a| {
            SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        })
    } else {
        getsockopt(&fd, sockopt::Ip6tOriginalDst).map(|a| {
            SocketAddr::from((
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            ))
        })
    };
    // ENOENT: no nat table / no conntrack entry, i.e. the connection was not redirected.
    Ok(found.unwrap_or(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_bound_to_a_source_address_gets_its_port_at_connect() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        defer_port_choice(&s);
        s.bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        let bound = s.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bound.port(), 0, "port taken at bind: {bound}");
    }
}
