//! istiod's protobuf resources → the workload model ([`crate::state`]). Each conversion either
//! yields a whole model value or says which field is wrong, so one malformed resource can be
//! refused (NACKed) while the rest of its push is applied.

use std::collections::HashMap;
use std::net::IpAddr;

use super::proto::{security, workload as pw};
use crate::state::{
    Action, Cidr, GatewayAddress, GatewayDestination, HealthStatus, Match, NetworkAddress,
    NetworkMode, Policy, Protocol, Scope, Service, ServiceAccountMatch, StringMatch, Workload,
};

// Upstream's defaults for fields istiod elides.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// One decoded `istio.workload.Address`.
// Short-lived: each value is moved once, into an `Arc`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Workload(Workload),
    Service(Service),
}

/// What the model fills in for fields istiod leaves empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// The mesh's trust domain (`TRUST_DOMAIN`); istiod elides the default one.
    pub trust_domain: String,
}

/// Why a resource was refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ConvertError> {
    Err(ConvertError {
        field: field.into(),
        message: message.into(),
    })
}

pub fn address(a: pw::Address, d: &Defaults) -> Result<Address, ConvertError> {
    match a.r#type {
        Some(pw::address::Type::Workload(w)) => workload(w, d).map(Address::Workload),
        Some(pw::address::Type::Service(s)) => service(s).map(Address::Service),
        None => err("type", "neither a workload nor a service"),
    }
}

fn ip(bytes: &[u8], field: &str) -> Result<IpAddr, ConvertError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    err(
        field,
        format!("an IP is 4 or 16 bytes, got {}", bytes.len()),
    )
}

fn port(p: u32, field: &str) -> Result<u16, ConvertError> {
    u16::try_from(p).or_else(|_| err(field, format!("port {p} is above 65535")))
}

fn non_empty(s: String, field: &str) -> Result<String, ConvertError> {
    if s.is_empty() {
        err(field, "must not be empty")
    } else {
        Ok(s)
    }
}

fn or_default(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_owned()
    } else {
        s
    }
}

/// Protobuf enums arrive as i32; a value this build does not know is an error, not a guess.
fn known<E: TryFrom<i32>>(v: i32, field: &str) -> Result<E, ConvertError> {
    E::try_from(v).or_else(|_| err(field, format!("unknown enum value {v}")))
}

pub fn workload(w: pw::Workload, d: &Defaults) -> Result<Workload, ConvertError> {
    let uid = non_empty(w.uid, "uid")?;
    let workload_ips = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(a, &format!("addresses[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match known(w.tunnel_protocol, "tunnelProtocol")? {
        pw::TunnelProtocol::Hbone => Protocol::Hbone,
        // Sidecars' own mTLS is not spoken here yet: such a workload is reached in plain TCP
        // as if it were outside the mesh (its sidecar then decides), as before xDS.
        pw::TunnelProtocol::None | pw::TunnelProtocol::LegacyIstioMtls => Protocol::Tcp,
    };
    let mut services = HashMap::with_capacity(w.services.len());
    for (key, list) in w.services {
        if !matches!(key.split_once('/'), Some((ns, host)) if !ns.is_empty() && !host.is_empty()) {
            return err(
                format!("services[{key:?}]"),
                "key is not `namespace/hostname`",
            );
        }
        let mut ports = HashMap::with_capacity(list.ports.len());
        for p in &list.ports {
            let f = format!("services[{key:?}]");
            ports.insert(port(p.service_port, &f)?, port(p.target_port, &f)?);
        }
        services.insert(key, ports);
    }
    let network_mode = match known(w.network_mode, "networkMode")? {
        pw::NetworkMode::Standard => NetworkMode::Standard,
        pw::NetworkMode::HostNetwork => NetworkMode::HostNetwork,
    };
    let status = match known(w.status, "status")? {
        pw::WorkloadStatus::Healthy => HealthStatus::Healthy,
        pw::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
    };
    let workload_type = match known(w.workload_type, "workloadType")? {
        pw::WorkloadType::Deployment => "deployment",
        pw::WorkloadType::Cronjob => "cronjob",
        pw::WorkloadType::Pod => "pod",
        pw::WorkloadType::Job => "job",
    };
    Ok(Workload {
        uid,
        name: w.name,
        namespace: w.namespace,
        service_account: or_default(w.service_account, DEFAULT_SERVICE_ACCOUNT),
        trust_domain: or_default(w.trust_domain, &d.trust_domain),
        workload_ips,
        protocol,
        node: w.node,
        network: w.network,
        services,
        waypoint: w.waypoint.map(|g| gateway(g, "waypoint")).transpose()?,
        network_gateway: w
            .network_gateway
            .map(|g| gateway(g, "networkGateway"))
            .transpose()?,
        network_mode,
        status,
        hostname: w.hostname,
        cluster_id: w.cluster_id,
        workload_name: w.workload_name,
        workload_type: workload_type.to_owned(),
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        authorization_policies: w.authorization_policies,
    })
}

fn network_address(a: pw::NetworkAddress, field: &str) -> Result<NetworkAddress, ConvertError> {
    Ok(NetworkAddress {
        network: a.network,
        address: ip(&a.address, field)?,
    })
}

fn gateway(g: pw::GatewayAddress, field: &str) -> Result<GatewayAddress, ConvertError> {
    let destination = match g.destination {
        Some(pw::gateway_address::Destination::Hostname(h)) => {
            if h.namespace.is_empty() || h.hostname.is_empty() {
                return err(field, "hostname needs a namespace and a hostname");
            }
            GatewayDestination::Hostname {
                namespace: h.namespace,
                hostname: h.hostname,
            }
        }
        Some(pw::gateway_address::Destination::Address(a)) => {
            GatewayDestination::Address(network_address(a, field)?)
        }
        None => return err(field, "no destination"),
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: port(g.hbone_mtls_port, field)?,
    })
}

pub fn service(s: pw::Service) -> Result<Service, ConvertError> {
    let namespace = non_empty(s.namespace, "namespace")?;
    let hostname = non_empty(s.hostname, "hostname")?;
    let vips = s
        .addresses
        .into_iter()
        .enumerate()
        .map(|(i, a)| network_address(a, &format!("addresses[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = HashMap::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let f = format!("ports[{i}]");
        ports.insert(port(p.service_port, &f)?, port(p.target_port, &f)?);
    }
    Ok(Service {
        name: s.name,
        namespace,
        hostname,
        vips,
        ports,
        subject_alt_names: s.subject_alt_names,
        waypoint: s.waypoint.map(|g| gateway(g, "waypoint")).transpose()?,
    })
}

pub fn policy(a: security::Authorization) -> Result<Policy, ConvertError> {
    let name = non_empty(a.name, "name")?;
    let namespace = non_empty(a.namespace, "namespace")?;
    let scope = match known(a.scope, "scope")? {
        security::Scope::Global => Scope::Global,
        security::Scope::Namespace => Scope::Namespace,
        security::Scope::WorkloadSelector => Scope::WorkloadSelector,
    };
    let action = match known(a.action, "action")? {
        security::Action::Allow => Action::Allow,
        security::Action::Deny => Action::Deny,
    };
    let mut rules = Vec::with_capacity(a.rules.len());
    for (r, rule) in a.rules.into_iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.into_iter().enumerate() {
            let matches = clause
                .matches
                .into_iter()
                .enumerate()
                .map(|(m, x)| policy_match(x, &format!("rules[{r}].clauses[{c}].matches[{m}]")))
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(matches);
        }
        rules.push(clauses);
    }
    Ok(Policy {
        name,
        namespace,
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    })
}

fn policy_match(m: security::Match, at: &str) -> Result<Match, ConvertError> {
    let strings = |v: Vec<security::StringMatch>, f: &str| {
        v.into_iter()
            .map(|s| string_match(s, &format!("{at}.{f}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let cidrs = |v: Vec<security::Address>, f: &str| {
        v.into_iter()
            .map(|a| cidr(a, &format!("{at}.{f}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = |v: Vec<u32>, f: &str| {
        v.into_iter()
            .map(|p| port(p, &format!("{at}.{f}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |v: Vec<security::ServiceAccountMatch>| {
        v.into_iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace,
                service_account: s.service_account,
            })
            .collect::<Vec<_>>()
    };
    Ok(Match {
        namespaces: strings(m.namespaces, "namespaces")?,
        not_namespaces: strings(m.not_namespaces, "notNamespaces")?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
        principals: strings(m.principals, "principals")?,
        not_principals: strings(m.not_principals, "notPrincipals")?,
        source_ips: cidrs(m.source_ips, "sourceIps")?,
        not_source_ips: cidrs(m.not_source_ips, "notSourceIps")?,
        destination_ips: cidrs(m.destination_ips, "destinationIps")?,
        not_destination_ips: cidrs(m.not_destination_ips, "notDestinationIps")?,
        destination_ports: ports(m.destination_ports, "destinationPorts")?,
        not_destination_ports: ports(m.not_destination_ports, "notDestinationPorts")?,
    })
}

fn string_match(s: security::StringMatch, field: &str) -> Result<StringMatch, ConvertError> {
    use security::string_match::MatchType;
    Ok(match s.match_type {
        Some(MatchType::Exact(x)) => StringMatch::Exact(x),
        Some(MatchType::Prefix(x)) => StringMatch::Prefix(x),
        Some(MatchType::Suffix(x)) => StringMatch::Suffix(x),
        Some(MatchType::Presence(_)) => StringMatch::Presence,
        // An empty match would match nothing or everything depending on the reader; refuse it.
        None => return err(field, "string match of no kind"),
    })
}

fn cidr(a: security::Address, field: &str) -> Result<Cidr, ConvertError> {
    let addr = ip(&a.address, field)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if a.length > max {
        return err(field, format!("prefix length {} is above {max}", a.length));
    }
    Ok(Cidr {
        addr,
        prefix_len: a.length as u8,
    })
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
