//! The authorities a `Service` port answers to: the HTTP `Host` / `:authority` values a proxy routes to it.
//!
//! One definition for both sides: the proxy indexes its routing state by these strings, and the control plane
//! refuses at `apply` a service claiming one another service already claims (a proxy holding both could not
//! route it, and would NACK the later one).

/// The authorities of service `name` in `namespace` on `port`, with its extra `hosts`: the name, `name.namespace`,
/// `name.namespace.svc` and `name.namespace.svc.cluster.local`, then every host in lower case, each as
/// `host:port`; for port 80 (which clients may omit) also each without the port. Duplicates are kept: a service
/// may list a host its name already implies.
pub fn authorities(name: &str, namespace: &str, port: u16, hosts: &[String]) -> Vec<String> {
    let qualified = format!("{name}.{namespace}");
    let bare: Vec<String> = [
        name.to_owned(),
        qualified.clone(),
        format!("{qualified}.svc"),
        format!("{qualified}.svc.cluster.local"),
    ]
    .into_iter()
    .chain(hosts.iter().map(|h| h.to_ascii_lowercase()))
    .collect();
    let mut authorities: Vec<String> = bare.iter().map(|h| format!("{h}:{port}")).collect();
    if port == 80 {
        authorities.extend(bare);
    }
    authorities
}

#[cfg(test)]
mod tests {
    use super::authorities;

    #[test]
    fn names_and_hosts_with_the_port_and_bare_for_port_80() {
        let hosts = ["Web.Example".to_owned()];
        assert_eq!(
            authorities("web", "shop", 8080, &hosts),
            [
                "web:8080",
                "web.shop:8080",
                "web.shop.svc:8080",
                "web.shop.svc.cluster.local:8080",
                "web.example:8080",
            ]
        );
        let at_80 = authorities("web", "shop", 80, &hosts);
        assert_eq!(at_80.len(), 10);
        assert!(at_80.contains(&"web.example:80".to_owned()), "{at_80:?}");
        assert!(at_80.contains(&"web.example".to_owned()), "{at_80:?}");
        assert!(at_80.contains(&"web".to_owned()), "{at_80:?}");
    }
}
