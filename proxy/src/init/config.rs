//! Validation of `shoal-proxy init`'s flags into a typed [`InitConfig`].
//!
//! Everything a user can get wrong is caught here, before any iptables command runs, so a bad flag never
//! leaves a half-installed rule set behind. Each error names the flag and the value.

use std::fmt;
use std::net::IpAddr;

use super::{InitArgs, InitError};

/// The validated settings from which the rules are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// Port of the proxy's inbound listener: captured inbound TCP is redirected here.
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener: captured outbound TCP is redirected here.
    pub outbound_port: u16,
    /// The proxy's admin port; never captured inbound, so probes and scrapes reach the proxy itself.
    pub admin_port: u16,
    /// Connections opened by processes of this uid (the proxy) are never captured outbound.
    pub proxy_uid: u32,
    /// Connections opened by processes of this gid are never captured outbound either.
    pub proxy_gid: Option<u32>,
    /// Which inbound destination ports are captured.
    pub inbound_ports: InboundPorts,
    /// Inbound destination ports never captured (in addition to the admin port).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination ranges never captured.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Also install the rules with ip6tables.
    pub ipv6: bool,
}

/// Which inbound destination ports are captured (`--inbound-ports`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// `*`: every port except the excluded ones.
    All,
    /// A list: only these ports (the excluded ones still win).
    Only(Vec<u16>),
    /// Empty: no inbound capture at all.
    None,
}

/// An IPv4 or IPv6 address range, `ADDR/PREFIX` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address as written (iptables itself masks host bits).
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Whether this range is an IPv6 one (and so belongs to ip6tables).
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl InitConfig {
    /// Validates `args`; the error names the first flag whose value is wrong.
    pub fn from_args(args: &InitArgs) -> Result<Self, InitError> {
        let port = |flag: &'static str, value: u16| {
            if value == 0 {
                Err(invalid(
                    flag,
                    &value.to_string(),
                    "expected a port from 1 to 65535",
                ))
            } else {
                Ok(value)
            }
        };
        let inbound_port = port("--inbound-port", args.inbound_port)?;
        let outbound_port = port("--outbound-port", args.outbound_port)?;
        let admin_port = port("--admin-port", args.admin_port)?;
        // Both listeners on one port would send the app's outgoing connections to the inbound side (or the
        // reverse): traffic would loop or be misrouted, so refuse it here rather than debug it later.
        if inbound_port == outbound_port {
            return Err(invalid(
                "--outbound-port",
                &outbound_port.to_string(),
                "must differ from --inbound-port",
            ));
        }

        let inbound_ports = parse_inbound_ports(&args.inbound_ports)?;
        let exclude_inbound_ports =
            parse_ports("--exclude-inbound-ports", &args.exclude_inbound_ports)?;
        let exclude_outbound_ports =
            parse_ports("--exclude-outbound-ports", &args.exclude_outbound_ports)?;
        let exclude_outbound_cidrs =
            parse_cidrs("--exclude-outbound-cidrs", &args.exclude_outbound_cidrs)?;
        if !args.ipv6 {
            // Without --ipv6 only iptables runs, so an IPv6 range would be silently ignored; the user almost
            // certainly expected it to matter.
            if let Some(cidr) = exclude_outbound_cidrs.iter().find(|c| c.is_ipv6()) {
                return Err(invalid(
                    "--exclude-outbound-cidrs",
                    &args.exclude_outbound_cidrs,
                    &format!("{cidr} is an IPv6 range; add --ipv6 to install IPv6 rules as well"),
                ));
            }
        }

        Ok(Self {
            inbound_port,
            outbound_port,
            admin_port,
            proxy_uid: args.proxy_uid,
            proxy_gid: args.proxy_gid,
            inbound_ports,
            exclude_inbound_ports,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            ipv6: args.ipv6,
        })
    }
}

fn invalid(flag: &'static str, value: &str, expected: &str) -> InitError {
    InitError::InvalidFlag {
        flag,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

/// `*` → all, empty → none, else a port list.
fn parse_inbound_ports(value: &str) -> Result<InboundPorts, InitError> {
    match value.trim() {
        "*" => Ok(InboundPorts::All),
        _ => {
            let ports = parse_ports("--inbound-ports", value)?;
            Ok(if ports.is_empty() {
                InboundPorts::None
            } else {
                InboundPorts::Only(ports)
            })
        }
    }
}

/// A comma-separated port list. Blank entries are skipped (a trailing comma from a templated value is
/// harmless); duplicates are dropped so each port yields one rule.
fn parse_ports(flag: &'static str, value: &str) -> Result<Vec<u16>, InitError> {
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = match item.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(invalid(
                    flag,
                    value,
                    &format!(
                        "`{item}` is not a port: expected comma-separated ports from 1 to 65535, e.g. 22,8443"
                    ),
                ));
            }
        };
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// A comma-separated list of `ADDR/PREFIX` or bare addresses.
fn parse_cidrs(flag: &'static str, value: &str) -> Result<Vec<Cidr>, InitError> {
    let mut cidrs = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let cidr =
            parse_cidr(item).map_err(|why| invalid(flag, value, &format!("`{item}` {why}")))?;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

fn parse_cidr(item: &str) -> Result<Cidr, String> {
    const EXPECTED: &str =
        "expected an address range such as 10.0.0.0/8, 169.254.169.254 or fd00::/8";
    let (addr, prefix) = match item.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (item, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("is not an address range: {EXPECTED}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => {
                return Err(format!(
                    "has an invalid prefix length (0 to {max}): {EXPECTED}"
                ));
            }
        },
    };
    Ok(Cidr { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::tests::args;

    fn flag_of(err: InitError) -> &'static str {
        match err {
            InitError::InvalidFlag { flag, .. } => flag,
            other => panic!("expected InvalidFlag, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate() {
        let config = InitConfig::from_args(&args(&[])).unwrap();
        assert_eq!(config.inbound_port, 15006);
        assert_eq!(config.outbound_port, 15001);
        assert_eq!(config.admin_port, 15021);
        assert_eq!(config.proxy_uid, 1337);
        assert_eq!(config.proxy_gid, None);
        assert_eq!(config.inbound_ports, InboundPorts::All);
        assert!(config.exclude_inbound_ports.is_empty());
        assert!(config.exclude_outbound_ports.is_empty());
        assert!(config.exclude_outbound_cidrs.is_empty());
        assert!(!config.ipv6);
    }

    #[test]
    fn lists_parse_with_blanks_and_duplicates() {
        let config = InitConfig::from_args(&args(&[
            "--inbound-ports",
            "8080, 9090,",
            "--exclude-outbound-ports",
            "22,22, 3306",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8, 169.254.169.254",
        ]))
        .unwrap();
        assert_eq!(config.inbound_ports, InboundPorts::Only(vec![8080, 9090]));
        assert_eq!(config.exclude_outbound_ports, vec![22, 3306]);
        let cidrs: Vec<String> = config
            .exclude_outbound_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "169.254.169.254/32"]);
    }

    #[test]
    fn empty_inbound_ports_means_no_inbound_capture() {
        let config = InitConfig::from_args(&args(&["--inbound-ports", ""])).unwrap();
        assert_eq!(config.inbound_ports, InboundPorts::None);
    }

    #[test]
    fn errors_name_the_flag_and_value() {
        let err =
            InitConfig::from_args(&args(&["--exclude-outbound-cidrs", "10.0.0.0/33"])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--exclude-outbound-cidrs") && text.contains("10.0.0.0/33"),
            "{text}"
        );
        assert_eq!(flag_of(err), "--exclude-outbound-cidrs");

        let err =
            InitConfig::from_args(&args(&["--exclude-outbound-cidrs", "not-an-ip"])).unwrap_err();
        assert_eq!(flag_of(err), "--exclude-outbound-cidrs");

        let err = InitConfig::from_args(&args(&["--exclude-inbound-ports", "22,ssh"])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--exclude-inbound-ports") && text.contains("`ssh`"),
            "{text}"
        );

        for (flag, value) in [
            ("--exclude-outbound-ports", "70000"),
            ("--exclude-outbound-ports", "0"),
            ("--inbound-ports", "*,80"),
            ("--inbound-port", "0"),
        ] {
            let err = InitConfig::from_args(&args(&[flag, value])).unwrap_err();
            assert_eq!(flag_of(err), flag, "{flag}={value}");
        }

        let err = InitConfig::from_args(&args(&["--outbound-port", "15006"])).unwrap_err();
        assert_eq!(flag_of(err), "--outbound-port");
    }

    #[test]
    fn ipv6_ranges_need_the_ipv6_flag() {
        let err =
            InitConfig::from_args(&args(&["--exclude-outbound-cidrs", "fd00::/8"])).unwrap_err();
        assert!(err.to_string().contains("--ipv6"), "{err}");
        let config =
            InitConfig::from_args(&args(&["--ipv6", "--exclude-outbound-cidrs", "fd00::/8"]))
                .unwrap();
        assert_eq!(config.exclude_outbound_cidrs[0].to_string(), "fd00::/8");
    }
}
