//! `meshtunnel-cni`: the chained CNI plugin. A container runtime runs it with the `CNI_*`
//! variables set and the network config (with `prevResult`) on stdin; it asks the meshtunnel node
//! agent to enrol the pod and hands `prevResult` back. All decisions live in `cni_agent::cni`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cni_agent::cni::{self, CniEnv, Invocation, LogLevel};
use cni_agent::protocol::Request;

/// DEL must never hold up pod deletion, so it waits for the agent far less than ADD does.
const DEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Chained CNI plugin that enrols pods in the meshtunnel ambient mesh.
///
/// Run by a container runtime, not by hand: the runtime sets the CNI_* variables below and writes
/// the network config (including prevResult from the earlier plugins) to stdin. Plugin settings
/// come from the config: agent_socket, agent_timeout_ms, log_level, exclude_namespaces.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// CNI operation: ADD, DEL, CHECK or VERSION.
    #[arg(long, env = "CNI_COMMAND")]
    command: Option<String>,
    /// Container (sandbox) ID.
    #[arg(long, env = "CNI_CONTAINERID")]
    container_id: Option<String>,
    /// Path of the pod's network namespace.
    #[arg(long, env = "CNI_NETNS")]
    netns: Option<String>,
    /// Interface name inside the pod.
    #[arg(long, env = "CNI_IFNAME")]
    ifname: Option<String>,
    /// Extra KEY=VALUE;... arguments (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID,
    /// K8S_POD_INFRA_CONTAINER_ID, IgnoreUnknown).
    #[arg(long, env = "CNI_ARGS")]
    args: Option<String>,
    /// Where CNI plugin binaries live (required by the spec; this plugin calls none).
    #[arg(long, env = "CNI_PATH")]
    path: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let err =
                cni::CniError::new(cni::Code::InvalidEnv, "bad CNI environment", e.to_string());
            return fail(&err.to_json(cni::Version::V1_0_0.as_str()));
        }
    };
    let env = CniEnv {
        command: cli.command,
        container_id: cli.container_id,
        netns: cli.netns,
        ifname: cli.ifname,
        args: cli.args,
        path: cli.path,
    };
    let mut log = Log {
        level: LogLevel::Info,
        tag: format!(
            "{} {}",
            env.command.as_deref().unwrap_or("?"),
            env.container_id.as_deref().unwrap_or("?")
        ),
    };

    let mut stdin = Vec::new();
    // VERSION's stdin carries nothing we use; not reading it also spares a hand-run `VERSION`
    // from waiting on a terminal.
    if env.command.as_deref() != Some("VERSION") {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            log.emit(LogLevel::Warn, &format!("reading stdin: {e}"));
        }
    }

    match cni::parse(&env, &stdin) {
        Err(f) => {
            log.emit(LogLevel::Error, &f.error.to_string());
            fail(&f.to_json())
        }
        Ok(Invocation::Version) => succeed(&cni::version_reply()),
        Ok(Invocation::Check) => ExitCode::SUCCESS,
        Ok(Invocation::Add(plan)) => {
            log.level = plan.settings.log_level;
            let outcome = plan.request.as_ref().map(|req| {
                log.emit(
                    LogLevel::Debug,
                    &format!(
                        "asking the agent at {}",
                        plan.settings.agent_socket.display()
                    ),
                );
                let req = Request::Add(req.clone());
                cni_agent::client::call(
                    &plan.settings.agent_socket,
                    &req,
                    plan.settings.agent_timeout,
                )
            });
            if let Some(why) = &plan.skip_reason {
                log.emit(LogLevel::Debug, why);
            }
            match cni::finish_add(&plan, outcome) {
                Ok(out) => succeed(&out),
                Err(f) => {
                    log.emit(LogLevel::Error, &f.error.to_string());
                    fail(&f.to_json())
                }
            }
        }
        Ok(Invocation::Del(plan)) => {
            if let Some(s) = &plan.settings {
                log.level = s.log_level;
            }
            if let Some(w) = &plan.warning {
                log.emit(LogLevel::Warn, w);
            }
            if let (Some(s), Some(req)) = (&plan.settings, &plan.request) {
                let timeout = s.agent_timeout.min(DEL_TIMEOUT);
                let outcome =
                    cni_agent::client::call(&s.agent_socket, &Request::Del(req.clone()), timeout);
                log.emit(
                    LogLevel::Debug,
                    &format!("agent notified of DEL: {outcome:?}"),
                );
            }
            ExitCode::SUCCESS
        }
    }
}

fn succeed(stdout: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{stdout}").and_then(|_| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn fail(error_json: &str) -> ExitCode {
    let _ = writeln!(std::io::stdout().lock(), "{error_json}");
    ExitCode::FAILURE
}

/// stdout belongs to the runtime, so diagnostics go to stderr (runtimes log it on failure).
struct Log {
    level: LogLevel,
    tag: String,
}

impl Log {
    fn emit(&self, level: LogLevel, msg: &str) {
        if level <= self.level {
            eprintln!("meshtunnel-cni[{}] {level:?}: {msg}", self.tag);
        }
    }
}
