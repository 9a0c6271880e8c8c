//! Transcribed from `conformance/tests/mesh/*.go` of kubernetes-sigs/gateway-api (the version
//! the control plane pins): reachability, matching, ports, frontends, consumer routes and
//! traffic splits. Each table keeps the Go test's order; where a Go case leaves a field at
//! its default, so does this one.

use super::case::*;

const MESH: &str = "gateway-conformance-mesh";

pub const MESH_BASIC: MeshTest = MeshTest {
    name: "MeshBasic",
    features: &["Mesh"],
    manifests: &[],
    body: Body::Cases(&[Case {
        name: "no configuration: reachable",
        ..GET
    }]),
};

pub const SIMPLE_SAME_NAMESPACE: MeshTest = MeshTest {
    name: "MeshHTTPRouteSimpleSameNamespace",
    features: &["Mesh", "HTTPRoute"],
    manifests: &["tests/mesh/httproute-simple-same-namespace.yaml"],
    body: Body::Cases(&[Case {
        name: "Simple HTTP request should reach infra-backend",
        expect: Expect {
            backend: Some("echo-v1"),
            namespace: Some(MESH),
            ..OK
        },
        ..GET
    }]),
};

pub const TRAFFIC_SPLIT: MeshTest = MeshTest {
    name: "MeshTrafficSplit",
    features: &["Mesh", "HTTPRoute"],
    manifests: &["tests/mesh/mesh-split.yaml"],
    body: Body::Cases(&[
        Case {
            name: "/v1",
            path: "/v1",
            expect: Expect {
                backend: Some("echo-v1"),
                ..OK
            },
            ..GET
        },
        Case {
            name: "/v2",
            path: "/v2",
            expect: Expect {
                backend: Some("echo-v2"),
                ..OK
            },
            ..GET
        },
    ]),
};

pub const PORTS: MeshTest = MeshTest {
    name: "MeshPorts",
    features: &[
        "Mesh",
        "HTTPRoute",
        "HTTPRouteParentRefPort",
        "HTTPRouteResponseHeaderModification",
    ],
    manifests: &["tests/mesh/mesh-ports.yaml"],
    body: Body::Cases(&[
        Case {
            name: "Explicit port set, send to that port",
            host: "echo-v1",
            expect: Expect {
                backend: Some("echo-v1"),
                response_headers: &[("X-Header-Set", "v1")],
                ..OK
            },
            ..GET
        },
        Case {
            name: "Explicit port, send to an excluded port",
            host: "echo-v1:8080",
            expect: Expect {
                backend: Some("echo-v1"),
                absent_response_headers: &["X-Header-Set"],
                ..OK
            },
            ..GET
        },
        Case {
            name: "No port set",
            host: "echo-v2",
            expect: Expect {
                backend: Some("echo-v2"),
                response_headers: &[("X-Header-Set", "v2")],
                ..OK
            },
            ..GET
        },
        Case {
            name: "No port set (8080)",
            host: "echo-v2:8080",
            expect: Expect {
                backend: Some("echo-v2"),
                response_headers: &[("X-Header-Set", "v2")],
                ..OK
            },
            ..GET
        },
    ]),
};

pub const FRONTEND: MeshTest = MeshTest {
    name: "MeshFrontend",
    features: &["Mesh", "HTTPRoute", "HTTPRouteResponseHeaderModification"],
    manifests: &["tests/mesh/mesh-frontend.yaml"],
    body: Body::Cases(&[
        Case {
            name: "Send to service",
            host: "echo-v2",
            expect: Expect {
                backend: Some("echo-v2"),
                response_headers: &[("X-Header-Set", "set")],
                ..OK
            },
            ..GET
        },
        Case {
            name: "Send to pod IP",
            host: "{echo-v2}:8080",
            expect: Expect {
                backend: Some("echo-v2"),
                absent_response_headers: &["X-Header-Set"],
                ..OK
            },
            ..GET
        },
    ]),
};

pub const FRONTEND_HOSTNAME: MeshTest = MeshTest {
    name: "MeshFrontendHostname",
    features: &[
        "Mesh",
        "MeshClusterIPMatching",
        "HTTPRoute",
        "HTTPRouteResponseHeaderModification",
    ],
    manifests: &["tests/mesh/mesh-frontend.yaml"],
    body: Body::Cases(&[
        Case {
            name: "Send to service with wrong hostname",
            host: "echo-v2",
            headers: &[("Host", "echo-v1")],
            expect: Expect {
                backend: Some("echo-v2"),
                response_headers: &[("X-Header-Set", "set")],
                ..OK
            },
            ..GET
        },
        Case {
            name: "Send to other service with matching hostname",
            host: "echo-v1",
            headers: &[("Host", "echo-v2")],
            expect: Expect {
                backend: Some("echo-v1"),
                absent_response_headers: &["X-Header-Set"],
                ..OK
            },
            ..GET
        },
    ]),
};

pub const CONSUMER_ROUTE: MeshTest = MeshTest {
    name: "MeshConsumerRoute",
    features: &[
        "Mesh",
        "MeshConsumerRoute",
        "HTTPRoute",
        "HTTPRouteResponseHeaderModification",
    ],
    manifests: &["tests/mesh/mesh-consumer-route.yaml"],
    body: Body::Cases(&[
        Case {
            name: "request from consumer route's namespace modified by HTTPRoute",
            from: From::Consumer,
            host: "echo-v1.gateway-conformance-mesh",
            expect: Expect {
                backend: Some("echo-v1"),
                response_headers: &[("X-Header-Set", "set")],
                ..OK
            },
            ..GET
        },
        Case {
            name: "request not from consumer route's namespace not modified by HTTPRoute",
            from: From::Producer,
            host: "echo-v1.gateway-conformance-mesh",
            expect: Expect {
                backend: Some("echo-v1"),
                absent_response_headers: &["X-Header-Set"],
                ..OK
            },
            ..GET
        },
    ]),
};

/// `Request{Path: p}` answered by `backend` in the mesh namespace.
const fn to(name: &'static str, path: &'static str, backend: &'static str) -> Case {
    Case {
        name,
        path,
        expect: Expect {
            backend: Some(backend),
            namespace: Some(MESH),
            ..OK
        },
        ..GET
    }
}

const fn with(mut c: Case, headers: &'static [(&'static str, &'static str)]) -> Case {
    c.headers = headers;
    c
}

const fn not_found(name: &'static str, path: &'static str) -> Case {
    Case {
        name,
        path,
        expect: Expect { status: 404, ..OK },
        ..GET
    }
}

pub const MATCHING: MeshTest = MeshTest {
    name: "MeshHTTPRouteMatching",
    features: &["Mesh", "HTTPRoute"],
    manifests: &["tests/mesh/httproute-matching.yaml"],
    body: Body::Cases(&[
        to("/", "/", "echo-v1"),
        to("/example", "/example", "echo-v1"),
        with(to("/ version: one", "/", "echo-v1"), &[("Version", "one")]),
        to("/v2", "/v2", "echo-v2"),
        to("/v2/example", "/v2/example", "echo-v2"),
        with(to("/ version: two", "/", "echo-v2"), &[("Version", "two")]),
        to("/v2/", "/v2/", "echo-v2"),
        // Not a path segment prefix so should not match /v2.
        to("/v2example", "/v2example", "echo-v1"),
        to("/foo/v2/example", "/foo/v2/example", "echo-v1"),
    ]),
};

pub const QUERY_PARAM_MATCHING: MeshTest = MeshTest {
    name: "MeshHTTPRouteQueryParamMatching",
    features: &["Mesh", "HTTPRoute", "MeshHTTPRouteQueryParamMatching"],
    manifests: &["tests/mesh/httproute-query-param-matching.yaml"],
    body: Body::Cases(&[
        to("whale", "/?animal=whale", "echo-v1"),
        to("dolphin", "/?animal=dolphin", "echo-v2"),
        to(
            "whale + other",
            "/?animal=whale&otherparam=irrelevant",
            "echo-v1",
        ),
        to(
            "dolphin + color",
            "/?animal=dolphin&color=yellow",
            "echo-v2",
        ),
        not_found("color only", "/?color=blue"),
        not_found("dog", "/?animal=dog"),
        not_found("whaledolphin", "/?animal=whaledolphin"),
        not_found("no query", "/"),
        // Combinations of query param matching with other core matches.
        to("/path1 whale", "/path1?animal=whale", "echo-v1"),
        with(
            to("version one + whale", "/?animal=whale", "echo-v2"),
            &[("version", "one")],
        ),
        // ORed matches hold when only one of them is used.
        to("/path3 shark", "/path3?animal=shark", "echo-v1"),
        with(
            to(
                "/path4 kraken version three",
                "/path4?animal=kraken",
                "echo-v1",
            ),
            &[("version", "three")],
        ),
        // ANDed match types do not hold on a subset.
        not_found("shark without /path3", "/?animal=shark"),
        not_found("/path4 kraken without version", "/path4?animal=kraken"),
        // Precedence when several matches hold.
        to("/path5 hydra", "/path5?animal=hydra", "echo-v1"),
    ]),
};

pub const NAMED_RULE: MeshTest = MeshTest {
    name: "MeshHTTPRouteNamedRule",
    features: &["Mesh", "HTTPRoute", "MeshHTTPRouteNamedRouteRule"],
    manifests: &["tests/mesh/httproute-named-rule.yaml"],
    body: Body::Cases(&[
        Case {
            expect: Expect {
                path: Some("/named"),
                ..to("", "", "echo-v1").expect
            },
            ..to("/named", "/named", "echo-v1")
        },
        // Upstream's table expects path "/named" here too, which its mesh client never
        // compares; the route does not rewrite, so the backend sees "/unnamed".
        Case {
            expect: Expect {
                path: Some("/unnamed"),
                ..to("", "", "echo-v2").expect
            },
            ..to("/unnamed", "/unnamed", "echo-v2")
        },
    ]),
};

pub const HTTP_WEIGHT: MeshTest = MeshTest {
    name: "MeshHTTPRouteWeight",
    features: &["Mesh", "HTTPRoute"],
    manifests: &["tests/mesh/httproute-weight.yaml"],
    body: Body::Weights(Weights {
        host: "echo",
        protocol: Protocol::Http,
        shares: &[("echo-v1", 0.7), ("echo-v2", 0.3)],
    }),
};

pub const GRPC_WEIGHT: MeshTest = MeshTest {
    name: "MeshGRPCRouteWeight",
    features: &["Mesh", "GRPCRoute"],
    manifests: &["tests/mesh/grpcroute-weight.yaml"],
    body: Body::Weights(Weights {
        host: "echo:7070",
        protocol: Protocol::Grpc,
        shares: &[("echo-v1", 0.7), ("echo-v2", 0.3)],
    }),
};
