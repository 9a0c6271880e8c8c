//! The plugin ↔ node-agent protocol. Internal to meshtunnel (both ends ship in one image), so it
//! is kept deliberately small rather than compatible with anything upstream.
//!
//! * Transport: an `AF_UNIX` `SOCK_STREAM` socket the agent listens on (default
//!   `/var/run/meshtunnel/cni-plugin.sock`, the plugin's `agent_socket` setting).
//! * One exchange per connection: the plugin connects, writes one request frame, reads one reply
//!   frame, and closes.
//! * Frame: a 4-byte big-endian length `N` with `1 ≤ N ≤ 65536`, then `N` bytes of UTF-8 JSON.
//! * Request, tagged by `op`:
//!   `{"op":"add","pod":{"namespace":"demo","name":"web-0","uid":"…"},"container_id":"…",
//!     "infra_container_id":"…","netns":"/var/run/netns/…","ifname":"eth0","ips":["10.1.0.5"]}`
//!   or `{"op":"del","pod":{…},"container_id":"…","netns":"…"}` (`netns` may be absent on DEL).
//! * Reply: `{"mesh":true}` (captured), `{"mesh":false}` (not for the mesh; start it as is), or
//!   with `"error":"…"` — the plugin treats any error as "could not enrol" and fails the ADD,
//!   whatever `mesh` says. Unknown fields are ignored on both sides so either end can grow.

use std::io::{Read, Write};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Bigger than any honest request (a pod has a handful of IPs) and small enough that a garbled
/// length prefix cannot make the agent allocate much.
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Empty when the runtime did not pass `K8S_POD_UID`.
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub pod: PodRef,
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
    pub netns: String,
    pub ifname: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub pod: PodRef,
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add(EnrollRequest),
    Del(ReleaseRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub mesh: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is outside 1..={MAX_FRAME}")]
    BadLength(usize),
    #[error("frame is not valid JSON for this message: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Validates a length prefix before anything is allocated for the body.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(header) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(FrameError::BadLength(n));
    }
    Ok(n)
}

/// Length prefix and body in one buffer so it goes out in a single write.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("protocol types serialize");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let mut body = vec![0u8; frame_len(header)?];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> Request {
        Request::Add(EnrollRequest {
            pod: PodRef {
                namespace: "demo".into(),
                name: "web-0".into(),
                uid: "u1".into(),
            },
            container_id: "c1".into(),
            infra_container_id: None,
            netns: "/var/run/netns/p".into(),
            ifname: "eth0".into(),
            ips: vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        })
    }

    #[test]
    fn round_trip_through_a_frame() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &add()).unwrap();
        assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, add());
    }

    #[test]
    fn wire_shape_is_documented_shape() {
        let v = serde_json::to_value(add()).unwrap();
        assert_eq!(v["op"], "add");
        assert_eq!(v["pod"]["namespace"], "demo");
        assert_eq!(v["ips"][1], "fd00::5");
        assert!(v.get("infra_container_id").is_none());
        let r: Reply = serde_json::from_str(r#"{"mesh":false,"future":1}"#).unwrap();
        assert_eq!(
            r,
            Reply {
                mesh: false,
                error: None
            }
        );
    }

    #[test]
    fn bad_lengths_are_refused_before_allocating() {
        assert!(matches!(frame_len([0; 4]), Err(FrameError::BadLength(0))));
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert_eq!(
            frame_len((MAX_FRAME as u32).to_be_bytes()).unwrap(),
            MAX_FRAME
        );
        let mut garbage: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(matches!(
            read_frame::<Request>(&mut garbage),
            Err(FrameError::BadLength(_))
        ));
    }

    #[test]
    fn truncated_and_wrong_bodies() {
        let mut buf = encode(&add());
        buf.truncate(buf.len() - 3);
        assert!(matches!(
            read_frame::<Request>(&mut buf.as_slice()),
            Err(FrameError::Io(_))
        ));
        let buf = encode(&serde_json::json!({"op": "explode"}));
        assert!(matches!(
            read_frame::<Request>(&mut buf.as_slice()),
            Err(FrameError::BadJson(_))
        ));
    }
}
