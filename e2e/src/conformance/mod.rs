//! The Gateway API conformance suite's mesh profile (MESH-HTTP core and extended, MESH-GRPC
//! core) as whole-system tests: the upstream manifests, read from the suite at test time, and
//! the Go tests' request/expected-response cases transcribed into tables ([`ALL`]). The mesh
//! manifests' Deployments are pods of the two-node mesh (real ztunnels), their Services the
//! local config's services; the waypoint sits between the client and them.
//!
//! How routes reach the waypoint is a [`RouteSource`]: a directory of YAML files today
//! ([`FileDir`]); the same tables can run against routes applied with kubectl to a real
//! apiserver once the waypoint watches one.

pub mod case;
pub mod cases_filters;
pub mod cases_routing;
pub mod manifests;
pub mod upstream;

mod harness;

pub use case::{Body, Case, MeshTest};
pub use harness::{FileDir, Harness, RouteSource};
pub use manifests::Doc;

use cases_filters as f;
use cases_routing as r;

/// Every test of `conformance/tests/mesh/`, in the suite's file order.
pub const ALL: &[MeshTest] = &[
    r::GRPC_WEIGHT,
    f::REDIRECT_303,
    f::REDIRECT_307,
    f::REDIRECT_308,
    r::MATCHING,
    r::NAMED_RULE,
    r::QUERY_PARAM_MATCHING,
    f::REDIRECT_HOST_AND_STATUS,
    f::REDIRECT_PATH,
    f::REDIRECT_PORT,
    f::REDIRECT_SCHEME,
    f::BACKEND_REQUEST_HEADER_MODIFIER,
    f::REQUEST_HEADER_MODIFIER,
    f::REWRITE_PATH,
    r::SIMPLE_SAME_NAMESPACE,
    r::HTTP_WEIGHT,
    r::MESH_BASIC,
    r::CONSUMER_ROUTE,
    r::FRONTEND_HOSTNAME,
    r::FRONTEND,
    r::PORTS,
    r::TRAFFIC_SPLIT,
];
