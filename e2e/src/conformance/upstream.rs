//! Where the Gateway API conformance suite is on this machine: the Go module
//! `sigs.k8s.io/gateway-api/conformance` at the version the control plane pins. Its manifests
//! are read from there at test time, never copied into this tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `MESHTUNNEL_GATEWAY_API_DIR` (scripts/test.sh exports it), else the Go module cache's copy
/// of the version `e2e/controlplane/istio/go.mod` pins, if it was downloaded.
pub fn suite_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MESHTUNNEL_GATEWAY_API_DIR") {
        let d = PathBuf::from(d);
        return check(&d);
    }
    let version = pinned_version()?;
    let cache = Command::new("go")
        .args(["env", "GOMODCACHE"])
        .output()
        .context("running `go env GOMODCACHE`")?;
    let cache = String::from_utf8_lossy(&cache.stdout).trim().to_owned();
    let d = Path::new(&cache).join(format!("sigs.k8s.io/gateway-api/conformance@{version}"));
    check(&d).with_context(|| {
        format!(
            "MESHTUNNEL_GATEWAY_API_DIR is unset and the module cache has no conformance \
             suite {version}: run scripts/test.sh, or `go mod download \
             sigs.k8s.io/gateway-api/conformance@{version}` and export \
             MESHTUNNEL_GATEWAY_API_DIR"
        )
    })
}

fn check(d: &Path) -> Result<PathBuf> {
    if !d.join("tests/mesh").is_dir() || !d.join("mesh/manifests.yaml").is_file() {
        bail!("{} is not the Gateway API conformance module", d.display());
    }
    Ok(d.to_owned())
}

/// The `sigs.k8s.io/gateway-api` version in the control plane's go.mod.
fn pinned_version() -> Result<String> {
    let gomod = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/istio/go.mod");
    let text =
        std::fs::read_to_string(&gomod).with_context(|| format!("reading {}", gomod.display()))?;
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("sigs.k8s.io/gateway-api")).then(|| w.next().map(str::to_owned))?
        })
        .with_context(|| format!("no sigs.k8s.io/gateway-api in {}", gomod.display()))
}

/// Every `ShortName` the suite's mesh tests declare (`tests/mesh/*.go`).
pub fn short_names(suite: &Path) -> Result<std::collections::BTreeSet<String>> {
    let mut names = std::collections::BTreeSet::new();
    let dir = suite.join("tests/mesh");
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "go") {
            let text = std::fs::read_to_string(&p)?;
            for l in text.lines() {
                if let Some(rest) = l.trim().strip_prefix("ShortName:") {
                    names.insert(
                        rest.trim()
                            .trim_matches(|c| c == '"' || c == ',')
                            .to_owned(),
                    );
                }
            }
        }
    }
    Ok(names)
}
