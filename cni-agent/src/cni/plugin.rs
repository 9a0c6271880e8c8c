use serde_json::Value;

pub use super::config::{LogLevel, Settings};

use super::args::{parse_cni_args, K8sArgs};
use super::config::{parse_conf, ConfError};
use super::env::{CniEnv, Command};
use super::error::{CniError, Code};
use super::result::{convert, pod_ips};
use super::version::Version;
use crate::protocol::{EnrollRequest, PodRef, ReleaseRequest, Reply};

/// What the runtime asked for, fully validated.
#[derive(Debug)]
pub enum Invocation {
    Version,
    Add(AddPlan),
    Check,
    Del(DelPlan),
}

#[derive(Debug)]
pub struct AddPlan {
    pub settings: Settings,
    pub version: Version,
    /// `None` when the agent need not be asked; `skip_reason` says why.
    pub request: Option<EnrollRequest>,
    pub skip_reason: Option<String>,
    /// prevResult in the config's version: our stdout on success.
    pub output: String,
}

/// DEL never fails, so its plan carries what could be salvaged plus a note on what could not.
#[derive(Debug, Default)]
pub struct DelPlan {
    pub settings: Option<Settings>,
    pub request: Option<ReleaseRequest>,
    pub warning: Option<String>,
}

/// A refused invocation: the error for stdout and the cniVersion to echo with it.
#[derive(Debug)]
pub struct Failure {
    pub echo_version: String,
    pub error: CniError,
}

impl Failure {
    pub fn to_json(&self) -> String {
        self.error.to_json(&self.echo_version)
    }
}

impl From<ConfError> for Failure {
    fn from(e: ConfError) -> Self {
        Failure {
            echo_version: e.echo_version,
            error: e.error,
        }
    }
}

/// How the exchange with the node agent went.
#[derive(Debug, Clone)]
pub enum AgentOutcome {
    Replied(Reply),
    Unreachable(String),
    TimedOut,
    BadReply(String),
}

pub fn parse(env: &CniEnv, stdin: &[u8]) -> Result<Invocation, Failure> {
    let command = env.command().map_err(|error| Failure {
        echo_version: sniff_version(stdin),
        error,
    })?;
    match command {
        // VERSION's stdin only says which version the runtime speaks; the answer is the same.
        Command::Version => Ok(Invocation::Version),
        Command::Del => Ok(Invocation::Del(parse_del(env, stdin))),
        Command::Check => {
            let conf = parse_conf(stdin)?;
            let fail = |error| Failure {
                echo_version: conf.version.as_str().into(),
                error,
            };
            if !conf.version.supports_check() {
                return Err(fail(CniError::new(
                    Code::IncompatibleVersion,
                    "CHECK is not supported before cniVersion 0.4.0",
                    format!("config has {}", conf.version.as_str()),
                )));
            }
            env.require(&env.container_id, "CNI_CONTAINERID")
                .map_err(fail)?;
            Ok(Invocation::Check)
        }
        Command::Add => parse_add(env, stdin),
    }
}

fn parse_add(env: &CniEnv, stdin: &[u8]) -> Result<Invocation, Failure> {
    let conf = parse_conf(stdin)?;
    let version = conf.version;
    let fail = |error| Failure {
        echo_version: version.as_str().into(),
        error,
    };
    let container_id = env
        .require(&env.container_id, "CNI_CONTAINERID")
        .map_err(fail)?;
    let netns = env.require(&env.netns, "CNI_NETNS").map_err(fail)?;
    let ifname = env.require(&env.ifname, "CNI_IFNAME").map_err(fail)?;
    env.require(&env.path, "CNI_PATH").map_err(fail)?;
    let k8s = parse_cni_args(env.args.as_deref().unwrap_or("")).map_err(fail)?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        fail(CniError::new(
            Code::InvalidConfig,
            "meshtunnel-cni must be chained: the config has no prevResult",
            "put meshtunnel-cni after the plugin that sets up the pod's interfaces",
        ))
    })?;
    let ips = pod_ips(prev).map_err(fail)?;
    let output = convert(prev, version).to_string();

    let (request, skip_reason) = match pod_ref(&k8s) {
        None => (
            None,
            Some("CNI_ARGS names no Kubernetes pod; nothing to enrol".to_string()),
        ),
        Some(pod) if conf.settings.exclude_namespaces.contains(&pod.namespace) => {
            let why = format!("namespace {} is excluded", pod.namespace);
            (None, Some(why))
        }
        Some(pod) => (
            Some(EnrollRequest {
                pod,
                container_id: container_id.into(),
                infra_container_id: k8s.infra_container_id.clone(),
                netns: netns.into(),
                ifname: ifname.into(),
                ips,
            }),
            None,
        ),
    };
    Ok(Invocation::Add(AddPlan {
        settings: conf.settings,
        version,
        request,
        skip_reason,
        output,
    }))
}

fn parse_del(env: &CniEnv, stdin: &[u8]) -> DelPlan {
    let settings = match parse_conf(stdin) {
        Ok(c) => c.settings,
        Err(e) => {
            return DelPlan {
                warning: Some(format!("ignoring unusable config on DEL: {}", e.error)),
                ..DelPlan::default()
            }
        }
    };
    let k8s = match parse_cni_args(env.args.as_deref().unwrap_or("")) {
        Ok(k) => k,
        Err(e) => {
            return DelPlan {
                settings: Some(settings),
                warning: Some(format!("not notifying the agent: {e}")),
                request: None,
            }
        }
    };
    let excluded = |p: &PodRef| settings.exclude_namespaces.contains(&p.namespace);
    let request = pod_ref(&k8s)
        .filter(|p| !excluded(p))
        .map(|pod| ReleaseRequest {
            pod,
            container_id: env.container_id.clone().unwrap_or_default(),
            netns: env.netns.clone().filter(|n| !n.is_empty()),
        });
    DelPlan {
        settings: Some(settings),
        request,
        warning: None,
    }
}

fn pod_ref(k8s: &K8sArgs) -> Option<PodRef> {
    match (&k8s.namespace, &k8s.name) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some(PodRef {
            namespace: ns.clone(),
            name: name.clone(),
            uid: k8s.uid.clone().unwrap_or_default(),
        }),
        _ => None,
    }
}

/// The version to echo when we fail before the config is validated.
fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .unwrap_or_else(|| Version::V1_0_0.as_str().into())
}

/// Turns the agent's answer into the plugin's result. Everything except a clean reply fails the
/// ADD: a pod that should be captured must not start uncaptured, and the runtime retries.
pub fn finish_add(plan: &AddPlan, outcome: Option<AgentOutcome>) -> Result<String, Failure> {
    let fail = |error| Failure {
        echo_version: plan.version.as_str().into(),
        error,
    };
    let Some(req) = &plan.request else {
        return Ok(plan.output.clone());
    };
    let pod = format!("{}/{}", req.pod.namespace, req.pod.name);
    let socket = plan.settings.agent_socket.display();
    match outcome {
        None => Err(fail(CniError::new(
            Code::TryAgainLater,
            format!("meshtunnel node agent was not asked about pod {pod}"),
            "",
        ))),
        Some(AgentOutcome::Replied(Reply { error: Some(e), .. })) => Err(fail(CniError::new(
            Code::EnrollFailed,
            format!("meshtunnel node agent could not enrol pod {pod}"),
            e,
        ))),
        Some(AgentOutcome::Replied(Reply { error: None, .. })) => Ok(plan.output.clone()),
        Some(AgentOutcome::Unreachable(e)) => Err(fail(CniError::new(
            Code::TryAgainLater,
            format!(
                "meshtunnel node agent unreachable at {socket}; not starting pod {pod} uncaptured"
            ),
            e,
        ))),
        Some(AgentOutcome::TimedOut) => Err(fail(CniError::new(
            Code::TryAgainLater,
            format!(
                "meshtunnel node agent did not answer about pod {pod} within {} ms",
                plan.settings.agent_timeout.as_millis()
            ),
            "",
        ))),
        Some(AgentOutcome::BadReply(e)) => Err(fail(CniError::new(
            Code::AgentProtocol,
            format!("meshtunnel node agent sent an unusable reply about pod {pod}"),
            e,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=infra";

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: Some(command.into()),
            container_id: Some("c-1".into()),
            netns: Some("/var/run/netns/p1".into()),
            ifname: Some("eth0".into()),
            args: Some(ARGS.into()),
            path: Some("/opt/cni/bin".into()),
        }
    }

    fn conf(version: &str) -> String {
        let ip = if version == "1.0.0" {
            r#"{"interface":0,"address":"10.1.0.5/24"}"#
        } else {
            r#"{"version":"4","interface":0,"address":"10.1.0.5/24"}"#
        };
        format!(
            r#"{{"cniVersion":"{version}","name":"net","type":"meshtunnel-cni","agent_socket":"/tmp/a.sock","exclude_namespaces":["kube-system"],
               "prevResult":{{"cniVersion":"{version}","interfaces":[{{"name":"eth0","sandbox":"/var/run/netns/p1"}}],"ips":[{ip}]}}}}"#
        )
    }

    fn add_plan(e: &CniEnv, stdin: &str) -> AddPlan {
        match parse(e, stdin.as_bytes()).unwrap() {
            Invocation::Add(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn failure(e: &CniEnv, stdin: &str) -> Failure {
        parse(e, stdin.as_bytes()).unwrap_err()
    }

    #[test]
    fn add_builds_the_enrol_request() {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            let plan = add_plan(&env("ADD"), &conf(v));
            let req = plan.request.as_ref().unwrap();
            assert_eq!(req.pod.namespace, "demo");
            assert_eq!(req.pod.name, "web-0");
            assert_eq!(req.pod.uid, "u-1");
            assert_eq!(req.infra_container_id.as_deref(), Some("infra"));
            assert_eq!(req.container_id, "c-1");
            assert_eq!(req.netns, "/var/run/netns/p1");
            assert_eq!(
                req.ips,
                vec!["10.1.0.5".parse::<std::net::IpAddr>().unwrap()]
            );
            let out: Value = serde_json::from_str(&plan.output).unwrap();
            assert_eq!(out["cniVersion"], v);
        }
    }

    #[test]
    fn add_outcomes() {
        let plan = add_plan(&env("ADD"), &conf("1.0.0"));
        let ok = |mesh| Some(AgentOutcome::Replied(Reply { mesh, error: None }));
        assert_eq!(finish_add(&plan, ok(true)).unwrap(), plan.output);
        assert_eq!(finish_add(&plan, ok(false)).unwrap(), plan.output);
        let code = |o| finish_add(&plan, o).unwrap_err().error.code;
        let refused = AgentOutcome::Replied(Reply {
            mesh: true,
            error: Some("netns gone".into()),
        });
        assert_eq!(code(Some(refused)), Code::EnrollFailed);
        // An error wins even if the agent also claims the pod is not for the mesh.
        let odd = AgentOutcome::Replied(Reply {
            mesh: false,
            error: Some("?".into()),
        });
        assert_eq!(code(Some(odd)), Code::EnrollFailed);
        assert_eq!(
            code(Some(AgentOutcome::Unreachable("ENOENT".into()))),
            Code::TryAgainLater
        );
        assert_eq!(code(Some(AgentOutcome::TimedOut)), Code::TryAgainLater);
        assert_eq!(
            code(Some(AgentOutcome::BadReply("junk".into()))),
            Code::AgentProtocol
        );
        assert_eq!(code(None), Code::TryAgainLater);
        let f = finish_add(&plan, Some(AgentOutcome::TimedOut)).unwrap_err();
        assert_eq!(f.echo_version, "1.0.0");
    }

    #[test]
    fn excluded_namespace_and_non_pods_skip_the_agent() {
        let mut e = env("ADD");
        e.args = Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns".into());
        let plan = add_plan(&e, &conf("0.4.0"));
        assert!(plan.request.is_none());
        assert!(plan.skip_reason.unwrap().contains("kube-system"));
        e.args = None;
        let plan = add_plan(&e, &conf("0.4.0"));
        assert!(plan.request.is_none());
        assert_eq!(finish_add(&plan, None).unwrap(), plan.output);
    }

    #[test]
    fn add_error_codes() {
        let good = conf("1.0.0");
        assert_eq!(failure(&env("ADD"), "nonsense").error.code, Code::Decoding);
        assert_eq!(failure(&env("ADD"), &good[..40]).error.code, Code::Decoding);
        let f = failure(&env("ADD"), &conf("1.0.0").replace("1.0.0", "0.2.0"));
        assert_eq!(f.error.code, Code::IncompatibleVersion);
        assert_eq!(f.echo_version, "0.2.0");
        let no_prev = r#"{"cniVersion":"0.3.1","name":"n","type":"meshtunnel-cni"}"#;
        let f = failure(&env("ADD"), no_prev);
        assert_eq!(f.error.code, Code::InvalidConfig);
        assert_eq!(f.echo_version, "0.3.1");
        let bad_prev = good.replace("10.1.0.5/24", "not-an-ip");
        assert_eq!(failure(&env("ADD"), &bad_prev).error.code, Code::Decoding);

        type Clear = fn(&mut CniEnv);
        let clears: [(&str, Clear); 5] = [
            ("CNI_CONTAINERID", |e| e.container_id = None),
            ("CNI_NETNS", |e| e.netns = None),
            ("CNI_IFNAME", |e| e.ifname = Some(String::new())),
            ("CNI_PATH", |e| e.path = None),
            ("CNI_COMMAND", |e| e.command = None),
        ];
        for (name, clear) in clears {
            let mut e = env("ADD");
            clear(&mut e);
            let f = failure(&e, &good);
            assert_eq!(f.error.code, Code::InvalidEnv, "{name}");
            assert!(f.error.msg.contains(name), "{name}: {}", f.error.msg);
        }
        let mut e = env("ADD");
        e.args = Some("K8S_POD_NAME=x;SURPRISE=1".into());
        assert_eq!(failure(&e, &good).error.code, Code::InvalidEnv);
        let f = failure(&env("STATUS"), &good);
        assert_eq!(
            (f.error.code, f.echo_version.as_str()),
            (Code::InvalidEnv, "1.0.0")
        );
    }

    #[test]
    fn version_ignores_stdin() {
        assert!(matches!(
            parse(&env("VERSION"), b"").unwrap(),
            Invocation::Version
        ));
    }

    #[test]
    fn check_needs_0_4_0() {
        assert!(matches!(
            parse(&env("CHECK"), conf("0.4.0").as_bytes()).unwrap(),
            Invocation::Check
        ));
        let f = failure(&env("CHECK"), &conf("0.3.1"));
        assert_eq!(f.error.code, Code::IncompatibleVersion);
        assert_eq!(failure(&env("CHECK"), "{").error.code, Code::Decoding);
    }

    #[test]
    fn del_never_fails_and_salvages_what_it_can() {
        let plan = match parse(&env("DEL"), conf("1.0.0").as_bytes()).unwrap() {
            Invocation::Del(p) => p,
            other => panic!("{other:?}"),
        };
        let req = plan.request.unwrap();
        assert_eq!(req.pod.name, "web-0");
        assert_eq!(req.netns.as_deref(), Some("/var/run/netns/p1"));
        assert!(plan.warning.is_none());

        let mut e = env("DEL");
        e.netns = None;
        e.container_id = None;
        let Invocation::Del(p) = parse(&e, conf("0.3.1").as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(p.request.unwrap().netns, None);

        let Invocation::Del(p) = parse(&env("DEL"), b"garbage").unwrap() else {
            panic!()
        };
        assert!(p.request.is_none() && p.settings.is_none());
        assert!(p.warning.unwrap().contains("code 6"));

        e.args = Some("BAD".into());
        let Invocation::Del(p) = parse(&e, conf("1.0.0").as_bytes()).unwrap() else {
            panic!()
        };
        assert!(p.request.is_none() && p.warning.is_some());
    }
}
