/// Versions whose config and result formats we understand. 0.1/0.2 results have a different
/// shape, and 1.1.0 adds commands (GC, STATUS) we do not implement.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }

    /// CHECK first appeared in 0.4.0; older configs must not be checked.
    pub fn supports_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// Before 1.0.0 every result IP carried `"version": "4"|"6"`; 1.0.0 dropped it.
    pub(crate) fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

/// What `CNI_COMMAND=VERSION` prints.
pub fn version_reply() -> String {
    serde_json::json!({
        "cniVersion": Version::V1_0_0.as_str(),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_supported_version() {
        for s in SUPPORTED_VERSIONS {
            assert_eq!(Version::parse(s).unwrap().as_str(), s);
        }
        for bad in ["0.2.0", "1.1.0", "", "1.0", "v1.0.0"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn check_and_ip_version_field_follow_the_spec_history() {
        assert!(!Version::V0_3_1.supports_check());
        assert!(Version::V0_4_0.supports_check());
        assert!(Version::V0_4_0.ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
    }

    #[test]
    fn version_reply_is_exact() {
        assert_eq!(
            version_reply(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
        );
    }
}
