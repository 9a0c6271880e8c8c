//! The waypoint's own answers, worded as Envoy words them so users (and their tools)
//! recognise them, and the Envoy response flag each one records.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::Body;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReply {
    NoRoute,
    NoHealthyUpstream,
    UpstreamTimeout,
    Denied,
    AllWeightsZero,
    ConnectFailure,
    UpstreamReset,
    FaultAbort(u16),
    BodyTooLarge,
    /// The client's request body was malformed (bad chunking) or cut short.
    BadRequest,
}

impl LocalReply {
    pub fn status(self) -> StatusCode {
        match self {
            LocalReply::NoRoute => StatusCode::NOT_FOUND,
            LocalReply::NoHealthyUpstream
            | LocalReply::ConnectFailure
            | LocalReply::UpstreamReset => StatusCode::SERVICE_UNAVAILABLE,
            LocalReply::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            LocalReply::Denied => StatusCode::FORBIDDEN,
            LocalReply::AllWeightsZero => StatusCode::INTERNAL_SERVER_ERROR,
            LocalReply::FaultAbort(c) => {
                StatusCode::from_u16(c).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            LocalReply::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            LocalReply::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            LocalReply::NoRoute => "",
            LocalReply::NoHealthyUpstream => "no healthy upstream",
            LocalReply::UpstreamTimeout => "upstream request timeout",
            LocalReply::Denied => "RBAC: access denied",
            LocalReply::AllWeightsZero => "",
            LocalReply::ConnectFailure => "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            LocalReply::UpstreamReset => "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            LocalReply::FaultAbort(_) => "fault filter abort",
            LocalReply::BodyTooLarge => "request body too large to buffer for retries or mirroring",
            LocalReply::BadRequest => "bad request body",
        }
    }

    /// Envoy's response flag for the access log and `response_flags`.
    pub fn flag(self) -> &'static str {
        match self {
            LocalReply::NoRoute => "NR",
            LocalReply::NoHealthyUpstream => "UH",
            LocalReply::UpstreamTimeout => "UT",
            LocalReply::Denied => "RBAC",
            LocalReply::AllWeightsZero => "NR",
            LocalReply::ConnectFailure => "UF",
            LocalReply::UpstreamReset => "UC",
            LocalReply::FaultAbort(_) => "FI",
            LocalReply::BodyTooLarge => "-",
            LocalReply::BadRequest => "DPE",
        }
    }

    pub fn response(self) -> Response<Body> {
        let mut r = Response::new(
            Full::new(Bytes::from_static(self.body().as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *r.status_mut() = self.status();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}
