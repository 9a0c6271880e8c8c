use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{CniError, Code};
use super::version::Version;

pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/meshtunnel/cni-plugin.sock";
pub const DEFAULT_AGENT_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Our keys in the plugin's entry of the conflist (written by the installer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub agent_socket: PathBuf,
    pub agent_timeout: Duration,
    pub log_level: LogLevel,
    /// Pods here never wait for the agent. Without this, an agent that is down would also keep
    /// the cluster's own infrastructure pods (DNS, the agent's dependencies) from starting.
    pub exclude_namespaces: Vec<String>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PluginKeys {
    agent_socket: String,
    agent_timeout_ms: u64,
    log_level: LogLevel,
    exclude_namespaces: Vec<String>,
}

impl Default for PluginKeys {
    fn default() -> Self {
        PluginKeys {
            agent_socket: DEFAULT_AGENT_SOCKET.into(),
            agent_timeout_ms: DEFAULT_AGENT_TIMEOUT_MS,
            log_level: LogLevel::Info,
            exclude_namespaces: Vec::new(),
        }
    }
}

const OUR_KEYS: [&str; 4] = [
    "agent_socket",
    "agent_timeout_ms",
    "log_level",
    "exclude_namespaces",
];

/// A parsed network configuration as the runtime passes it to one plugin of a chain.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub settings: Settings,
    pub prev_result: Option<Value>,
}

/// Why the config was refused, with the cniVersion to echo in the error (whatever string the
/// runtime sent, or 1.0.0 when there was none).
#[derive(Debug)]
pub struct ConfError {
    pub echo_version: String,
    pub error: CniError,
}

pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, ConfError> {
    let fail = |echo: &str, error| ConfError {
        echo_version: echo.to_string(),
        error,
    };
    let default_echo = Version::V1_0_0.as_str();

    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        fail(
            default_echo,
            CniError::new(
                Code::Decoding,
                "failed to decode network config",
                e.to_string(),
            ),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(fail(
            default_echo,
            CniError::new(
                Code::InvalidConfig,
                "network config is not a JSON object",
                "",
            ),
        ));
    };
    let raw_version = match obj.get("cniVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(fail(
                default_echo,
                CniError::new(Code::InvalidConfig, "cniVersion is not a string", ""),
            ))
        }
        None => {
            return Err(fail(
                default_echo,
                CniError::new(Code::InvalidConfig, "network config has no cniVersion", ""),
            ))
        }
    };
    let version = Version::parse(&raw_version).ok_or_else(|| {
        fail(
            &raw_version,
            CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "config asks for {raw_version:?}; meshtunnel-cni supports {:?}",
                    super::version::SUPPORTED_VERSIONS
                ),
            ),
        )
    })?;
    let settings = settings(&obj).map_err(|e| fail(&raw_version, e))?;
    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(Value::Object(p.clone())),
        Some(_) => {
            return Err(fail(
                &raw_version,
                CniError::new(Code::Decoding, "prevResult is not a JSON object", ""),
            ))
        }
    };
    Ok(NetConf {
        version,
        settings,
        prev_result,
    })
}

fn settings(obj: &Map<String, Value>) -> Result<Settings, CniError> {
    // Deserialize only our keys: the rest of the object belongs to the runtime and the spec.
    let ours: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| OUR_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let keys: PluginKeys = serde_json::from_value(Value::Object(ours)).map_err(|e| {
        CniError::new(
            Code::InvalidConfig,
            "invalid meshtunnel-cni settings",
            e.to_string(),
        )
    })?;
    if keys.agent_socket.is_empty() {
        return Err(CniError::new(
            Code::InvalidConfig,
            "invalid meshtunnel-cni settings",
            "agent_socket is empty",
        ));
    }
    if keys.agent_timeout_ms == 0 {
        return Err(CniError::new(
            Code::InvalidConfig,
            "invalid meshtunnel-cni settings",
            "agent_timeout_ms must be positive",
        ));
    }
    Ok(Settings {
        agent_socket: keys.agent_socket.into(),
        agent_timeout: Duration::from_millis(keys.agent_timeout_ms),
        log_level: keys.log_level,
        exclude_namespaces: keys.exclude_namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(version: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"k8s-pod-network","type":"meshtunnel-cni"{extra}}}"#
        )
    }

    const PREV_031: &str = r#","prevResult":{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","interface":0,"address":"10.1.0.5/24","gateway":"10.1.0.1"}],"dns":{}}"#;

    #[test]
    fn parses_0_3_1_with_defaults() {
        let c = parse_conf(conf("0.3.1", PREV_031).as_bytes()).unwrap();
        assert_eq!(c.version, Version::V0_3_1);
        assert_eq!(c.settings.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.settings.agent_timeout, Duration::from_secs(30));
        assert_eq!(c.settings.log_level, LogLevel::Info);
        assert!(c.settings.exclude_namespaces.is_empty());
        assert_eq!(c.prev_result.unwrap()["ips"][0]["address"], "10.1.0.5/24");
    }

    #[test]
    fn parses_0_4_0_and_1_0_0_with_our_keys() {
        let extra = r#","agent_socket":"/run/x.sock","agent_timeout_ms":1500,"log_level":"debug","exclude_namespaces":["kube-system"]"#;
        for (v, want) in [("0.4.0", Version::V0_4_0), ("1.0.0", Version::V1_0_0)] {
            let c = parse_conf(conf(v, extra).as_bytes()).unwrap();
            assert_eq!(c.version, want);
            assert_eq!(c.settings.agent_socket, PathBuf::from("/run/x.sock"));
            assert_eq!(c.settings.agent_timeout, Duration::from_millis(1500));
            assert_eq!(c.settings.log_level, LogLevel::Debug);
            assert_eq!(c.settings.exclude_namespaces, vec!["kube-system"]);
            assert!(c.prev_result.is_none());
        }
    }

    #[test]
    fn other_plugins_keys_are_not_ours_to_judge() {
        let c = parse_conf(
            conf(
                "1.0.0",
                r#","ipam":{"type":"host-local"},"capabilities":{"portMappings":true}"#,
            )
            .as_bytes(),
        );
        assert!(c.is_ok());
    }

    fn code(input: &str) -> (Code, String) {
        let e = parse_conf(input.as_bytes()).unwrap_err();
        (e.error.code, e.echo_version)
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("").0, Code::Decoding);
        assert_eq!(code("garbage").0, Code::Decoding);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","na"#).0, Code::Decoding);
        assert_eq!(code("[1,2]").0, Code::InvalidConfig);
        assert_eq!(code(r#"{"name":"x"}"#).0, Code::InvalidConfig);
        assert_eq!(code(r#"{"cniVersion":1}"#).0, Code::InvalidConfig);
        assert_eq!(
            code(&conf("0.2.0", "")),
            (Code::IncompatibleVersion, "0.2.0".to_string())
        );
        assert_eq!(code(&conf("9.9.9", "")).0, Code::IncompatibleVersion);
        assert_eq!(
            code(&conf("1.0.0", r#","agent_timeout_ms":"soon""#)),
            (Code::InvalidConfig, "1.0.0".to_string())
        );
        assert_eq!(
            code(&conf("1.0.0", r#","agent_timeout_ms":0"#)).0,
            Code::InvalidConfig
        );
        assert_eq!(
            code(&conf("1.0.0", r#","agent_socket":"""#)).0,
            Code::InvalidConfig
        );
        assert_eq!(
            code(&conf("1.0.0", r#","log_level":"loud""#)).0,
            Code::InvalidConfig
        );
        assert_eq!(
            code(&conf("1.0.0", r#","exclude_namespaces":"a""#)).0,
            Code::InvalidConfig
        );
        assert_eq!(
            code(&conf("1.0.0", r#","prevResult":[]"#)).0,
            Code::Decoding
        );
    }

    #[test]
    fn null_prev_result_is_absent() {
        let c = parse_conf(conf("1.0.0", r#","prevResult":null"#).as_bytes()).unwrap();
        assert!(c.prev_result.is_none());
    }
}
