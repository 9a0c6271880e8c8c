//! What each proxy path calls when a connection opens: turns the proxy's view of the
//! connection into labels and a [`ConnMeter`].

use std::net::SocketAddr;
use std::sync::Arc;

use super::{ConnMeter, ConnectionView, LogContext, PodMeter, Reporter};
use crate::identity::Identity;
use crate::state::{ConfigSnapshot, Protocol, Upstream, WaypointHop, Workload};

impl PodMeter {
    /// Outbound (15001): `me` is this pod's workload (when the config has it), `src` the app's
    /// socket, `dst` where it meant to go, `upstream` what the config made of it (None when it
    /// could not be resolved).
    pub fn outbound(
        self: &Arc<Self>,
        snapshot: &ConfigSnapshot,
        me: Option<&Workload>,
        src: SocketAddr,
        dst: SocketAddr,
        upstream: Option<&Upstream>,
    ) -> ConnMeter {
        let (destination, service, hbone_target) = match upstream {
            Some(Upstream::Workload {
                workload,
                addr,
                service,
            }) => (
                Some(workload.as_ref()),
                service.as_deref(),
                (workload.protocol == Protocol::Hbone).then_some(*addr),
            ),
            Some(Upstream::Passthrough(_)) => (None, None, None),
            // A VIP without a usable endpoint is still worth a service label.
            None => (None, snapshot.service_by_vip(dst.ip()).map(|s| &**s), None),
        };
        let view = ConnectionView {
            reporter: Reporter::Source,
            source: me,
            source_identity: Some(&self.identity),
            destination,
            destination_identity: None,
            destination_service: service,
            mtls: hbone_target.is_some(),
        };
        self.open(
            &view,
            destination.map(|w| w.uid.as_str()),
            LogContext {
                src,
                dst,
                hbone_target,
            },
        )
    }

    /// Outbound through a waypoint: as upstream, the destination workload is the waypoint
    /// (the hop this ztunnel reaches) and the service is the one the app addressed.
    pub fn outbound_waypoint(
        self: &Arc<Self>,
        me: Option<&Workload>,
        src: SocketAddr,
        dst: SocketAddr,
        hop: &WaypointHop,
    ) -> ConnMeter {
        let view = ConnectionView {
            reporter: Reporter::Source,
            source: me,
            source_identity: Some(&self.identity),
            destination: Some(&hop.waypoint),
            destination_identity: None,
            destination_service: hop.service.as_deref(),
            mtls: true,
        };
        self.open(
            &view,
            Some(hop.waypoint.uid.as_str()),
            LogContext {
                src,
                dst,
                hbone_target: Some(hop.authority),
            },
        )
    }

    /// Inbound: `me` is this pod's workload, `client` the peer as it reaches the app (its IP
    /// is the client pod's), `target` the app address. `client_identity` is the mTLS peer's;
    /// None for plaintext (15006).
    pub fn inbound(
        self: &Arc<Self>,
        snapshot: &ConfigSnapshot,
        me: Option<&Workload>,
        client: SocketAddr,
        target: SocketAddr,
        client_identity: Option<&Identity>,
    ) -> ConnMeter {
        let source = snapshot.workload_by_ip(client.ip());
        let view = ConnectionView {
            reporter: Reporter::Destination,
            source: source.map(|w| &**w),
            source_identity: client_identity,
            destination: me,
            destination_identity: Some(&self.identity),
            destination_service: None,
            mtls: client_identity.is_some(),
        };
        self.open(
            &view,
            source.map(|w| w.uid.as_str()),
            LogContext {
                src: client,
                dst: target,
                hbone_target: client_identity.map(|_| target),
            },
        )
    }
}
