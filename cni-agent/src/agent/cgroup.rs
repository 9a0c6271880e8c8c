//! Which pod a process belongs to, from its cgroup path: the kubelet names each pod's cgroup
//! after its uid, `.../pod<uid>/...` with the cgroupfs driver and
//! `...-pod<uid_with_underscores>.slice/...` with the systemd driver.

/// Pod uids named in the text of a `/proc/PID/cgroup` file, normalised to the API's dashed form.
pub fn pod_uids(cgroup: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = cgroup;
    while let Some(i) = rest.find("pod") {
        let after = &rest[i + 3..];
        if let Some(uid) = after.get(..36).and_then(uid_at) {
            if !out.contains(&uid) {
                out.push(uid);
            }
        }
        rest = after;
    }
    out
}

/// `s` as a uuid (8-4-4-4-12 hex digits, separated by `-` or `_`), dashed.
fn uid_at(s: &str) -> Option<String> {
    let ok = s.char_indices().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-' || c == '_',
        _ => c.is_ascii_hexdigit(),
    });
    ok.then(|| s.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cgroup_drivers() {
        let cgroupfs = "0::/kubepods/burstable/pod5f3e4c1a-2b7d-4e8f-9a0b-1c2d3e4f5a6b/0123abcd\n";
        assert_eq!(pod_uids(cgroupfs), ["5f3e4c1a-2b7d-4e8f-9a0b-1c2d3e4f5a6b"]);
        let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/\
            kubepods-besteffort-pod5f3e4c1a_2b7d_4e8f_9a0b_1c2d3e4f5a6b.slice/cri-containerd-ab.scope\n";
        assert_eq!(pod_uids(systemd), ["5f3e4c1a-2b7d-4e8f-9a0b-1c2d3e4f5a6b"]);
        // v1 hierarchies repeat the path per controller: one uid.
        let v1 = format!("4:memory{}\n3:cpu{}", &cgroupfs[2..], &cgroupfs[2..]);
        assert_eq!(pod_uids(&v1).len(), 1);
    }

    #[test]
    fn not_a_pod() {
        assert!(pod_uids("0::/system.slice/containerd.service\n").is_empty());
        assert!(pod_uids("0::/podman/pod-short\n").is_empty());
        assert!(pod_uids("0::/kubepods/podzzzzzzzz-2b7d-4e8f-9a0b-1c2d3e4f5a6b/x").is_empty());
        assert!(pod_uids("").is_empty());
    }
}
