//! The node daemons start with the environment their DaemonSet in `manifests/` sets: every
//! variable the DaemonSet sets, with its literal value unless the node on this machine needs
//! another (paths and addresses inside the test's directories and netns, downward-API values).
//! A variable the DaemonSet takes from the downward API that the fixture cannot supply fails the
//! start, so the fixture cannot silently drift from the manifests. Variables the DaemonSets do
//! not set (a kubeconfig instead of in-cluster config, test scoping) are added by the caller
//! and say why there.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_yaml::Value;

/// The single container's env of the DaemonSet in `manifests/<file>`: name → literal value
/// (None when it comes from `valueFrom`).
pub(crate) fn daemonset_env(file: &str) -> Result<BTreeMap<String, Option<String>>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for doc in text.split("\n---") {
        let doc: Value =
            serde_yaml::from_str(doc).with_context(|| format!("parsing {}", path.display()))?;
        if doc["kind"].as_str() != Some("DaemonSet") {
            continue;
        }
        let env = &doc["spec"]["template"]["spec"]["containers"][0]["env"];
        return Ok(env
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e["name"].as_str()?.to_owned();
                Some((name, e["value"].as_str().map(str::to_owned)))
            })
            .collect());
    }
    bail!("no DaemonSet in {}", path.display())
}

/// Sets on `cmd` every variable the DaemonSet sets: `overrides` where given, else the literal.
pub(crate) fn apply(cmd: &mut Command, file: &str, overrides: &[(&str, String)]) -> Result<()> {
    let overrides: BTreeMap<&str, &String> = overrides.iter().map(|(k, v)| (*k, v)).collect();
    for (name, literal) in daemonset_env(file)? {
        match (overrides.get(name.as_str()), literal) {
            (Some(v), _) => cmd.env(&name, v),
            (None, Some(v)) => cmd.env(&name, v),
            (None, None) => bail!(
                "{file} sets {name} from the downward API and the fixture supplies no value for it"
            ),
        };
    }
    for name in overrides.keys() {
        if !daemonset_env(file)?.contains_key(*name) {
            bail!("the fixture overrides {name}, which {file} does not set");
        }
    }
    Ok(())
}
