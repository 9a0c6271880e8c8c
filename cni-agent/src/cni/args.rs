use super::error::{CniError, Code};

/// The Kubernetes identity a kubelet-driven runtime passes in `CNI_ARGS`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct K8sArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub infra_container_id: Option<String>,
}

/// Parses `KEY=VALUE;KEY=VALUE`. Like libcni, an unknown key is an error unless `IgnoreUnknown`
/// is true: runtimes set it precisely so that plugins ignore keys meant for others.
pub fn parse_cni_args(raw: &str) -> Result<K8sArgs, CniError> {
    let mut out = K8sArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::InvalidEnv,
                "invalid CNI_ARGS",
                format!("pair {pair:?} has no '='"),
            ));
        };
        let value = value.to_string();
        match key {
            "K8S_POD_NAMESPACE" => out.namespace = Some(value),
            "K8S_POD_NAME" => out.name = Some(value),
            "K8S_POD_UID" => out.uid = Some(value),
            "K8S_POD_INFRA_CONTAINER_ID" => out.infra_container_id = Some(value),
            "IgnoreUnknown" => {
                ignore_unknown = parse_go_bool(&value).ok_or_else(|| {
                    CniError::new(
                        Code::InvalidEnv,
                        "invalid CNI_ARGS",
                        format!("IgnoreUnknown={value:?} is not a boolean"),
                    )
                })?
            }
            other => unknown.push(other.to_string()),
        }
    }
    if !ignore_unknown && !unknown.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnv,
            "invalid CNI_ARGS",
            format!("unknown keys {unknown:?} and IgnoreUnknown is not set"),
        ));
    }
    Ok(out)
}

/// The spellings Go's strconv.ParseBool accepts, since runtimes written in Go produce them.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_style_args() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0b7c-11",
        )
        .unwrap();
        assert_eq!(a.namespace.as_deref(), Some("demo"));
        assert_eq!(a.name.as_deref(), Some("web-0"));
        assert_eq!(a.uid.as_deref(), Some("0b7c-11"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc123"));
    }

    #[test]
    fn empty_and_trailing_separators_are_fine() {
        assert_eq!(parse_cni_args("").unwrap(), K8sArgs::default());
        let a = parse_cni_args("K8S_POD_NAME=x;;").unwrap();
        assert_eq!(a.name.as_deref(), Some("x"));
    }

    #[test]
    fn values_may_contain_equals_and_be_empty() {
        let a = parse_cni_args("K8S_POD_NAME=a=b;K8S_POD_UID=").unwrap();
        assert_eq!(a.name.as_deref(), Some("a=b"));
        assert_eq!(a.uid.as_deref(), Some(""));
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let e = parse_cni_args("FOO=bar;K8S_POD_NAME=x").unwrap_err();
        assert_eq!(e.code, Code::InvalidEnv);
        assert!(e.details.contains("FOO"));
        assert!(parse_cni_args("FOO=bar;IgnoreUnknown=true").is_ok());
        // Order does not matter: IgnoreUnknown may come last.
        assert!(parse_cni_args("FOO=bar;IgnoreUnknown=T").is_ok());
        assert!(parse_cni_args("FOO=bar;IgnoreUnknown=0").is_err());
    }

    #[test]
    fn malformed_pairs_and_bools_are_invalid_env() {
        assert_eq!(
            parse_cni_args("K8S_POD_NAME").unwrap_err().code,
            Code::InvalidEnv
        );
        assert_eq!(
            parse_cni_args("IgnoreUnknown=yes").unwrap_err().code,
            Code::InvalidEnv
        );
    }
}
