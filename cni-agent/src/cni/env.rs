use super::error::{CniError, Code};

/// The `CNI_*` variables a runtime sets, as read from the process environment. Every field is
/// optional here; which ones a command needs is decided in [`crate::cni::parse`].
#[derive(Debug, Default, Clone)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl CniEnv {
    pub(crate) fn command(&self) -> Result<Command, CniError> {
        match self.command.as_deref() {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            None | Some("") => Err(missing("CNI_COMMAND")),
            Some(other) => Err(CniError::new(
                Code::InvalidEnv,
                "unknown CNI_COMMAND",
                format!("{other:?} (supported: ADD, DEL, CHECK, VERSION)"),
            )),
        }
    }

    /// A variable the spec requires for this command; empty counts as missing.
    pub(crate) fn require<'a>(
        &self,
        value: &'a Option<String>,
        name: &str,
    ) -> Result<&'a str, CniError> {
        match value.as_deref() {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(missing(name)),
        }
    }
}

fn missing(name: &str) -> CniError {
    CniError::new(
        Code::InvalidEnv,
        format!("required environment variable {name} is missing"),
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let mut e = CniEnv::default();
        assert_eq!(e.command().unwrap_err().code, Code::InvalidEnv);
        for (s, c) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
        ] {
            e.command = Some(s.into());
            assert_eq!(e.command().unwrap(), c);
        }
        for bad in ["GC", "STATUS", "add", ""] {
            e.command = Some(bad.into());
            assert_eq!(e.command().unwrap_err().code, Code::InvalidEnv, "{bad}");
        }
    }

    #[test]
    fn require_treats_empty_as_missing() {
        let e = CniEnv {
            netns: Some(String::new()),
            ifname: Some("eth0".into()),
            ..Default::default()
        };
        let err = e.require(&e.netns, "CNI_NETNS").unwrap_err();
        assert_eq!(err.code, Code::InvalidEnv);
        assert!(err.msg.contains("CNI_NETNS"));
        assert_eq!(e.require(&e.ifname, "CNI_IFNAME").unwrap(), "eth0");
    }
}
