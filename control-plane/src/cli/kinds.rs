//! Resource kind names as operators type them: `Route` in YAML, `route`, `routes` or `rt` on the command line.

use crate::model::ResourceKind;

/// The name of a kind in YAML documents (`kind: BackendPolicy`).
pub fn yaml_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Service => "Service",
        ResourceKind::EndpointRegistration => "EndpointRegistration",
        ResourceKind::Route => "Route",
        ResourceKind::BackendPolicy => "BackendPolicy",
        ResourceKind::AuthorizationPolicy => "AuthorizationPolicy",
        ResourceKind::RateLimit => "RateLimit",
        ResourceKind::FaultInjection => "FaultInjection",
        ResourceKind::Mirror => "Mirror",
    }
}

/// Short aliases accepted besides the full names and their plurals.
fn aliases(kind: ResourceKind) -> &'static [&'static str] {
    match kind {
        ResourceKind::Service => &["svc"],
        ResourceKind::EndpointRegistration => &["registration", "registrations", "reg"],
        ResourceKind::Route => &["rt"],
        ResourceKind::BackendPolicy => &["bp"],
        ResourceKind::AuthorizationPolicy => &["authz"],
        ResourceKind::RateLimit => &["rl"],
        ResourceKind::FaultInjection => &["fault", "faults"],
        ResourceKind::Mirror => &[],
    }
}

/// The kind named by `text`, case-insensitively, ignoring `-` and `_`: `BackendPolicy`, `backend-policy`,
/// `backendpolicies`, `bp`. The error lists the valid names.
pub fn parse(text: &str) -> Result<ResourceKind, String> {
    let wanted: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .collect::<String>()
        .to_ascii_lowercase();
    let found = ResourceKind::ALL.into_iter().find(|&kind| {
        let name = yaml_name(kind).to_ascii_lowercase();
        let plural = match name.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{name}s"),
        };
        wanted == name || wanted == plural || aliases(kind).contains(&wanted.as_str())
    });
    found.ok_or_else(|| format!("unknown kind {text:?}; valid kinds: {}", valid_names()))
}

/// Every kind's YAML name, comma-separated, for messages.
pub fn valid_names() -> String {
    let names: Vec<&str> = ResourceKind::ALL.into_iter().map(yaml_name).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_yaml_names_cli_names_plurals_and_aliases() {
        assert_eq!(parse("BackendPolicy"), Ok(ResourceKind::BackendPolicy));
        assert_eq!(parse("backend-policy"), Ok(ResourceKind::BackendPolicy));
        assert_eq!(parse("backendpolicies"), Ok(ResourceKind::BackendPolicy));
        assert_eq!(parse("svc"), Ok(ResourceKind::Service));
        assert_eq!(parse("services"), Ok(ResourceKind::Service));
        assert_eq!(
            parse("endpoint_registration"),
            Ok(ResourceKind::EndpointRegistration)
        );
        assert_eq!(parse("mirrors"), Ok(ResourceKind::Mirror));
        let error = parse("Gateway").unwrap_err();
        assert!(
            error.contains("Gateway") && error.contains("RateLimit"),
            "{error}"
        );
    }
}
