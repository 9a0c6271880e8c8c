//! Transcribed from `conformance/tests/mesh/*.go` of kubernetes-sigs/gateway-api: redirects,
//! request header modifiers (route and backendRef level) and URL rewrites.

use super::case::*;

const MESH: &str = "gateway-conformance-mesh";

/// `Request{Host: "echo", Path: p, UnfollowRedirect: true}` answered `status` with a redirect.
const fn redirect(path: &'static str, status: u16, r: Redirect) -> Case {
    Case {
        name: path,
        path,
        expect: Expect {
            status,
            redirect: Some(r),
            ..OK
        },
        ..GET
    }
}

const NO: Redirect = Redirect {
    scheme: None,
    host: None,
    port: None,
    path: None,
};

pub const REDIRECT_303: MeshTest = MeshTest {
    name: "MeshHTTPRoute303Redirect",
    features: &["Mesh", "HTTPRoute", "HTTPRoute303RedirectStatusCode"],
    manifests: &["tests/mesh/httproute-303-redirect.yaml"],
    body: Body::Cases(&[redirect(
        "/redirect",
        303,
        Redirect {
            path: Some("/redirect"),
            ..NO
        },
    )]),
};

pub const REDIRECT_307: MeshTest = MeshTest {
    name: "MeshHTTPRoute307Redirect",
    features: &["Mesh", "HTTPRoute", "HTTPRoute307RedirectStatusCode"],
    manifests: &["tests/mesh/httproute-307-redirect.yaml"],
    body: Body::Cases(&[redirect(
        "/temporary",
        307,
        Redirect {
            path: Some("/temporary"),
            ..NO
        },
    )]),
};

pub const REDIRECT_308: MeshTest = MeshTest {
    name: "MeshHTTPRoute308Redirect",
    features: &["Mesh", "HTTPRoute", "HTTPRoute308RedirectStatusCode"],
    manifests: &["tests/mesh/httproute-308-redirect.yaml"],
    body: Body::Cases(&[redirect(
        "/permanent",
        308,
        Redirect {
            path: Some("/permanent"),
            ..NO
        },
    )]),
};

const EXAMPLE: Redirect = Redirect {
    host: Some("example.org"),
    ..NO
};

pub const REDIRECT_HOST_AND_STATUS: MeshTest = MeshTest {
    name: "MeshHTTPRouteRedirectHostAndStatus",
    features: &["Mesh", "HTTPRoute"],
    manifests: &["tests/mesh/httproute-redirect-host-and-status.yaml"],
    body: Body::Cases(&[
        redirect("/hostname-redirect", 302, EXAMPLE),
        redirect("/host-and-status", 301, EXAMPLE),
    ]),
};

pub const REDIRECT_PATH: MeshTest = MeshTest {
    name: "MeshHTTPRouteRedirectPath",
    features: &["Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPath"],
    manifests: &["tests/mesh/httproute-redirect-path.yaml"],
    body: Body::Cases(&[
        redirect(
            "/original-prefix/lemon",
            302,
            Redirect {
                path: Some("/replacement-prefix/lemon"),
                ..NO
            },
        ),
        redirect(
            "/full/path/original",
            302,
            Redirect {
                path: Some("/full-path-replacement"),
                ..NO
            },
        ),
        redirect(
            "/path-and-host",
            302,
            Redirect {
                path: Some("/replacement-prefix"),
                ..EXAMPLE
            },
        ),
        redirect(
            "/path-and-status",
            301,
            Redirect {
                path: Some("/replacement-prefix"),
                ..NO
            },
        ),
        redirect(
            "/full-path-and-host",
            302,
            Redirect {
                path: Some("/replacement-full"),
                ..EXAMPLE
            },
        ),
        redirect(
            "/full-path-and-status",
            301,
            Redirect {
                path: Some("/replacement-full"),
                ..NO
            },
        ),
    ]),
};

const PORT_8083: Redirect = Redirect {
    port: Some(8083),
    ..NO
};

pub const REDIRECT_PORT: MeshTest = MeshTest {
    name: "MeshHTTPRouteRedirectPort",
    features: &["Mesh", "HTTPRoute", "MeshHTTPRouteRedirectPort"],
    manifests: &["tests/mesh/httproute-redirect-port.yaml"],
    body: Body::Cases(&[
        redirect("/port", 302, PORT_8083),
        redirect(
            "/port-and-host",
            302,
            Redirect {
                host: Some("example.org"),
                ..PORT_8083
            },
        ),
        redirect("/port-and-status", 301, PORT_8083),
        redirect(
            "/port-and-host-and-status",
            302,
            Redirect {
                host: Some("example.org"),
                ..PORT_8083
            },
        ),
    ]),
};

const HTTPS: Redirect = Redirect {
    scheme: Some("https"),
    ..NO
};

pub const REDIRECT_SCHEME: MeshTest = MeshTest {
    name: "MeshHTTPRouteSchemeRedirect",
    features: &["Mesh", "HTTPRoute", "MeshHTTPRouteSchemeRedirect"],
    manifests: &["tests/mesh/httproute-redirect-scheme.yaml"],
    body: Body::Cases(&[
        redirect("/scheme", 302, HTTPS),
        redirect(
            "/scheme-and-host",
            302,
            Redirect {
                host: Some("example.org"),
                ..HTTPS
            },
        ),
        redirect("/scheme-and-status", 301, HTTPS),
        redirect(
            "/scheme-and-host-and-status",
            302,
            Redirect {
                host: Some("example.org"),
                ..HTTPS
            },
        ),
    ]),
};

/// `Request{Path: p, Headers: h}` seen by echo-v1 at `p` with `want` and without `absent`.
const fn modified(
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: &'static [(&'static str, &'static str)],
    absent: &'static [&'static str],
) -> Case {
    Case {
        name: path,
        path,
        headers,
        expect: Expect {
            backend: Some("echo-v1"),
            namespace: Some(MESH),
            path: Some(path),
            request_headers: want,
            absent_request_headers: absent,
            ..OK
        },
        ..GET
    }
}

const HEADER_MODIFIER_CASES: &[Case] = &[
    modified(
        "/set",
        &[("Some-Other-Header", "val")],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    modified(
        "/set",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        &[],
    ),
    modified(
        "/add",
        &[("Some-Other-Header", "val")],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        &[],
    ),
    modified(
        "/add",
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
        &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        &[],
    ),
    modified(
        "/remove",
        &[("X-Header-Remove", "val")],
        &[],
        &["X-Header-Remove"],
    ),
    modified(
        "/multiple",
        &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
        &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        &["X-Header-Remove-1", "X-Header-Remove-2"],
    ),
    modified(
        "/case-insensitivity",
        &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
        &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        &["x-header-remove", "X-Header-Remove"],
    ),
];

pub const REQUEST_HEADER_MODIFIER: MeshTest = MeshTest {
    name: "MeshHTTPRouteRequestHeaderModifier",
    features: &["Mesh", "HTTPRoute"],
    manifests: &["tests/mesh/httproute-request-header-modifier.yaml"],
    body: Body::Cases(HEADER_MODIFIER_CASES),
};

pub const BACKEND_REQUEST_HEADER_MODIFIER: MeshTest = MeshTest {
    name: "MeshHTTPRouteBackendRequestHeaderModifier",
    features: &[
        "Mesh",
        "HTTPRoute",
        "MeshHTTPRouteBackendRequestHeaderModification",
    ],
    manifests: &["tests/mesh/httproute-request-header-modifier-backend.yaml"],
    body: Body::Cases(HEADER_MODIFIER_CASES),
};

/// `Request{Host: "echo", Path: p, Headers: h}` seen by echo-v1 at `seen`.
const fn rewritten(
    path: &'static str,
    seen: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: &'static [(&'static str, &'static str)],
    absent: &'static [&'static str],
) -> Case {
    Case {
        name: path,
        path,
        headers,
        expect: Expect {
            backend: Some("echo-v1"),
            namespace: Some(MESH),
            path: Some(seen),
            request_headers: want,
            absent_request_headers: absent,
            ..OK
        },
        ..GET
    }
}

const REWRITE_SENT: &[(&str, &str)] = &[
    ("X-Header-Remove", "remove-val"),
    ("X-Header-Add-Append", "append-val-1"),
    ("X-Header-Set", "set-val"),
];
const REWRITE_SEEN: &[(&str, &str)] = &[
    ("X-Header-Add", "header-val-1"),
    ("X-Header-Add-Append", "append-val-1,header-val-2"),
    ("X-Header-Set", "set-overwrites-values"),
];

pub const REWRITE_PATH: MeshTest = MeshTest {
    name: "MeshHTTPRouteRewritePath",
    features: &["Mesh", "HTTPRoute", "MeshHTTPRouteRewritePath"],
    manifests: &["tests/mesh/httproute-rewrite-path.yaml"],
    body: Body::Cases(&[
        rewritten("/prefix/one/two", "/one/two", &[], &[], &[]),
        rewritten("/strip-prefix/three", "/three", &[], &[], &[]),
        rewritten("/strip-prefix", "/", &[], &[], &[]),
        rewritten("/full/one/two", "/one", &[], &[], &[]),
        rewritten(
            "/full/rewrite-path-and-modify-headers/test",
            "/test",
            REWRITE_SENT,
            REWRITE_SEEN,
            &["X-Header-Remove"],
        ),
        rewritten(
            "/prefix/rewrite-path-and-modify-headers/one",
            "/prefix/one",
            REWRITE_SENT,
            REWRITE_SEEN,
            &["X-Header-Remove"],
        ),
    ]),
};
