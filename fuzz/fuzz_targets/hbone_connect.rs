//! Arbitrary method and authority in a HBONE request: the checks decide a status, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshtunnel::hbone::{check_connect, LocalTargets};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (method, authority) = text.split_once(' ').unwrap_or(("CONNECT", &text));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(req) = http::Request::builder()
        .method(method)
        .uri(authority)
        .body(())
    else {
        return;
    };
    let ips = ["10.0.0.5".parse().unwrap()];
    let _ = check_connect(&req, LocalTargets::Known(&ips));
    let _ = check_connect(&req, LocalTargets::Unknown);
});
