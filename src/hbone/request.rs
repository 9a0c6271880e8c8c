//! The checks a HBONE server applies to a CONNECT request, with no I/O under them so every
//! status code can be tested on its own.

use std::net::{IpAddr, SocketAddr};

use http::{Method, Request, StatusCode};

/// Why a CONNECT was refused, and the status the client's ztunnel receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: String,
}

impl Rejection {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Rejection {
            status,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.reason)
    }
}

/// What this pod can accept: its workload IPs, when the workload is known.
pub enum LocalTargets<'a> {
    Known(&'a [IpAddr]),
    /// The pod's workload is not (yet) in the config: nothing to route to.
    Unknown,
}

/// Validates a CONNECT aimed at a pod behind this listener and returns the target address.
pub fn check_connect<B>(
    req: &Request<B>,
    local: LocalTargets<'_>,
) -> Result<SocketAddr, Rejection> {
    if req.method() != Method::CONNECT {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("method {} is not CONNECT", req.method()),
        ));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| Rejection::new(StatusCode::BAD_REQUEST, "CONNECT without :authority"))?;
    let target: SocketAddr = authority.as_str().parse().map_err(|_| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("authority {authority:?} is not ip:port"),
        )
    })?;
    if target.port() == 0 {
        return Err(Rejection::new(StatusCode::BAD_REQUEST, "target port 0"));
    }
    match local {
        LocalTargets::Unknown => Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "destination workload unknown to this ztunnel",
        )),
        LocalTargets::Known(ips) if ips.contains(&target.ip()) => Ok(target),
        LocalTargets::Known(_) => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("target {} is not an address of this pod", target.ip()),
        )),
    }
}

/// The `forwarded` header (RFC 7239) of a CONNECT: the client's address, quoted because it
/// carries a port, and for service-addressed traffic the service's hostname, as upstream
/// ztunnel writes it (`for="10.0.0.2:41234";host=echo.demo.svc.cluster.local`).
pub fn forwarded_for(client: SocketAddr, host: Option<&str>) -> String {
    match host {
        Some(h) => format!("for=\"{client}\";host={h}"),
        None => format!("for=\"{client}\""),
    }
}

/// Reads back the client address from a `forwarded` header: the last `for=` (the hop nearest
/// to us), when present and an `ip:port`, quoted or not.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value
        .split([';', ','])
        .filter_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v)
        })
        .next_back()
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    const POD: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5))];

    #[test]
    fn accepts_connect_to_own_ip() {
        let r = req(Method::CONNECT, "10.0.0.5:8080");
        assert_eq!(
            check_connect(&r, LocalTargets::Known(POD)),
            Ok("10.0.0.5:8080".parse().unwrap())
        );
    }

    #[test]
    fn status_codes() {
        let cases = [
            (req(Method::GET, "http://10.0.0.5:8080/"), 400),
            (req(Method::POST, "10.0.0.5:8080"), 400),
            (req(Method::CONNECT, "example.com:80"), 400),
            (req(Method::CONNECT, "10.0.0.5:0"), 400),
            (req(Method::CONNECT, "10.0.0.6:8080"), 400),
        ];
        for (r, code) in cases {
            let got = check_connect(&r, LocalTargets::Known(POD)).unwrap_err();
            assert_eq!(got.status.as_u16(), code, "{} {}", r.method(), r.uri());
        }
        let r = req(Method::CONNECT, "10.0.0.5:8080");
        let got = check_connect(&r, LocalTargets::Unknown).unwrap_err();
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn forwarded_round_trips() {
        for a in ["10.1.2.3:4567", "[fd00::1]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            for host in [None, Some("echo.demo.svc.cluster.local")] {
                assert_eq!(parse_forwarded_for(&forwarded_for(a, host)), Some(a));
            }
        }
        assert_eq!(
            forwarded_for("10.1.2.3:4567".parse().unwrap(), Some("h.ns.svc")),
            "for=\"10.1.2.3:4567\";host=h.ns.svc"
        );
        // Unquoted (older writers), several hops (the last is the nearest), other parameters.
        let cases = [
            ("for=10.1.2.3:4567", Some("10.1.2.3:4567")),
            (
                "for=\"10.0.0.1:1\", for=\"10.0.0.2:2\";proto=https",
                Some("10.0.0.2:2"),
            ),
            ("host=x; For=\"10.0.0.3:3\"", Some("10.0.0.3:3")),
            ("by=x;proto=https", None),
            ("for=garbage", None),
            ("for=\"10.0.0.1\"", None),
            ("", None),
        ];
        for (header, want) in cases {
            let want = want.map(|w| w.parse::<SocketAddr>().unwrap());
            assert_eq!(parse_forwarded_for(header), want, "{header:?}");
        }
    }
}
