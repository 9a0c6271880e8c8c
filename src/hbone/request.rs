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

/// The client's address as the `forwarded` header carries it (RFC 7239).
pub fn forwarded_for(client: SocketAddr) -> String {
    match client {
        SocketAddr::V4(a) => format!("for={a}"),
        SocketAddr::V6(a) => format!("for=\"{a}\""),
    }
}

/// Reads back the client address from a `forwarded` header, when present and well formed.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([';', ',']).find_map(|part| {
        let v = part.trim().strip_prefix("for=")?;
        v.trim_matches('"').parse().ok()
    })
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
            assert_eq!(parse_forwarded_for(&forwarded_for(a)), Some(a));
        }
        assert_eq!(parse_forwarded_for("by=x;proto=https"), None);
        assert_eq!(parse_forwarded_for("for=garbage"), None);
    }
}
