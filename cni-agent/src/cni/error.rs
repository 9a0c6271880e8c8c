use serde::Serialize;

/// CNI error codes. 1–99 are the spec's well-known codes (CNI 1.0.0, "Error"); 100+ are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnv = 4,
    Decoding = 6,
    InvalidConfig = 7,
    /// Used when the agent is unreachable or slow: the condition is transient and the runtime
    /// should retry the sandbox, which is exactly what fail-closed needs.
    TryAgainLater = 11,
    /// The agent decided the pod belongs in the mesh but could not enrol it.
    EnrollFailed = 100,
    /// The agent answered something we cannot understand.
    AgentProtocol = 101,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object the runtime reads from stdout. `cni_version` echoes the config's version
    /// (the spec asks for "the same value as provided by the configuration").
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("plain struct serializes")
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code as u32)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::new(Code::TryAgainLater, "agent down", "connect: refused");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 11);
        assert_eq!(v["msg"], "agent down");
        assert_eq!(v["details"], "connect: refused");
    }

    #[test]
    fn empty_details_are_omitted() {
        let e = CniError::new(Code::EnrollFailed, "no", "");
        assert!(!e.to_json("1.0.0").contains("details"));
        assert_eq!(e.to_string(), "no (code 100)");
    }
}
