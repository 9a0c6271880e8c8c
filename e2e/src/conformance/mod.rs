//! The Gateway API conformance suite's mesh profile (MESH-HTTP core and extended, MESH-GRPC
//! core) as whole-system tests: the upstream manifests, read from the suite at test time, and
//! the Go tests' request/expected-response cases transcribed into tables ([`ALL`]). The mesh
//! manifests' Deployments are pods behind real ztunnels, their Services the mesh's services;
//! the waypoint sits between the client and them.
//!
//! How routes reach the waypoint is a [`RouteSource`]: a directory of YAML files the waypoint
//! watches in file mode ([`FileDir`], on the two-node mesh of [`Harness`]), or the upstream
//! manifests applied with kubectl to the real apiserver, watched by the waypoint in cluster
//! mode ([`KubectlApply`], on the cluster of [`ClusterHarness`]: real Services and Pods,
//! istiod's workload xDS). The cases run the same way in both ([`Runner`]).

pub mod case;
pub mod cases_filters;
pub mod cases_routing;
pub mod manifests;
pub mod upstream;

mod cluster;
mod harness;
mod run;

pub use case::{Body, Case, MeshTest};
pub use cluster::{ClusterHarness, KubectlApply};
pub use harness::{FileDir, Harness};
pub use manifests::Doc;
pub use run::{RouteSource, Runner, Targets, CONSUMER_NS, MESH_NS};

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
