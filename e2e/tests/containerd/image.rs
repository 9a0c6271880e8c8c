//! The pod sandbox ("pause") image, built here from busybox-static so that no registry is needed:
//! an OCI image layout with one uncompressed layer, packed as the tar `ctr images import` reads.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use meshtunnel_e2e::mesh::run_cmd;
use serde_json::json;

/// The reference the CRI config's `sandbox_image` names; the imported image carries it.
pub const PAUSE_IMAGE: &str = "meshtunnel.local/e2e/pause:1";

const BUSYBOX: &str = "/bin/busybox";

/// A pause that exits at once on SIGTERM (PID 1 gets no default signal handlers) and otherwise
/// never returns, so the sandbox stays up until the runtime stops it.
const ENTRYPOINT: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done",
];

/// Writes the image tar to `out`, using `work` as scratch space.
pub fn build_pause_tar(work: &Path, out: &Path) -> Result<()> {
    anyhow::ensure!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing: install busybox-static (scripts/setup-system.sh)"
    );
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::create_dir_all(&blobs)?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }

    let layer = work.join("layer.tar");
    run_cmd(
        Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                "--mtime=@0",
                "-C",
            ])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )
    .context("packing the pause rootfs")?;
    let layer_bytes = fs::read(&layer)?;
    let layer_digest = sha256(&layer)?;
    fs::write(blobs.join(&layer_digest), &layer_bytes)?;

    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Entrypoint": ENTRYPOINT, "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    }))?;
    let config_digest = put_blob(work, &blobs, "config.json", &config)?;

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_bytes.len(),
        }],
    }))?;
    let manifest_digest = put_blob(work, &blobs, "manifest.json", &manifest)?;

    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            // containerd names the imported image after this annotation.
            "annotations": { "io.containerd.image.name": PAUSE_IMAGE },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    run_cmd(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(out)
            .arg("."),
    )
    .context("packing the image layout")?;
    Ok(())
}

/// This machine's architecture in OCI's words (the import refuses other platforms' images).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn put_blob(work: &Path, blobs: &Path, name: &str, bytes: &[u8]) -> Result<String> {
    let tmp = work.join(name);
    fs::write(&tmp, bytes)?;
    let digest = sha256(&tmp)?;
    fs::rename(&tmp, blobs.join(&digest))?;
    Ok(digest)
}

fn sha256(path: &Path) -> Result<String> {
    let out = run_cmd(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}
