//! Pure generation of the capture rules: from an [`InitConfig`] to iptables argument vectors.
//!
//! Nothing here runs a command, so the exact rules (and the `--dry-run` output) are unit-testable and
//! identical on every machine. [`super::iptables`] decides which of them to apply against the live table.

use super::config::{InboundPorts, InitConfig};

/// The table every rule lives in: REDIRECT is a nat target.
pub const TABLE: &str = "nat";
/// Inbound classifier, jumped to from PREROUTING: decides which arriving connections are captured.
pub const INBOUND_CHAIN: &str = "SHOAL_INBOUND";
/// Inbound redirect to the proxy's inbound port.
pub const INBOUND_REDIRECT_CHAIN: &str = "SHOAL_IN_REDIRECT";
/// Outbound classifier, jumped to from OUTPUT: decides which local connections are captured.
pub const OUTPUT_CHAIN: &str = "SHOAL_OUTPUT";
/// Outbound redirect to the proxy's outbound port.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "SHOAL_REDIRECT";

/// Every chain `init` owns, in creation order. Redirect chains come first because the classifiers jump to
/// them and iptables refuses a jump to a chain that does not exist yet.
pub const OWN_CHAINS: [&str; 4] = [
    INBOUND_REDIRECT_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
    INBOUND_CHAIN,
    OUTPUT_CHAIN,
];

/// Which address family (and so which binary) a rule set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

/// One rule: the chain it is appended to and its match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain (one of ours, or the built-in PREROUTING/OUTPUT for the jumps).
    pub chain: &'static str,
    /// Everything after `-A CHAIN`.
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: &'static str, spec: &[&str]) -> Self {
        Self {
            chain,
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// `-t nat <op> CHAIN spec…`, e.g. `op` = `-A`, `-C` or `-D`.
    pub fn args(&self, op: &str) -> Vec<String> {
        let mut args = vec![
            "-t".to_owned(),
            TABLE.to_owned(),
            op.to_owned(),
            self.chain.to_owned(),
        ];
        args.extend(self.spec.iter().cloned());
        args
    }
}

/// The full desired state for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The contents of our own chains, in order. Re-installing flushes the chains and appends these again.
    pub chain_rules: Vec<Rule>,
    /// The jumps from the built-in chains into ours; these are the only rules init adds outside its own
    /// chains, so they are added only when `-C` says they are absent.
    pub jumps: Vec<Rule>,
}

/// Generates the rules for `family` from a validated config.
///
/// The shape is the same for every config (all four chains, both jumps) and only the chains' contents vary,
/// so re-running init with different flags is a plain flush-and-refill and never leaves a stale jump behind.
pub fn generate(config: &InitConfig, family: Family) -> RuleSet {
    let mut chain_rules = Vec::new();
    let port = |p: u16| p.to_string();

    chain_rules.push(Rule::new(
        INBOUND_REDIRECT_CHAIN,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port(config.inbound_port),
        ],
    ));
    chain_rules.push(Rule::new(
        OUTBOUND_REDIRECT_CHAIN,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port(config.outbound_port),
        ],
    ));

    // Inbound: exclusions first (they win over an include list), then the capture rule(s).
    if config.inbound_ports != InboundPorts::None {
        let mut excluded = vec![config.admin_port];
        excluded.extend(
            config
                .exclude_inbound_ports
                .iter()
                .copied()
                .filter(|p| *p != config.admin_port),
        );
        for p in excluded {
            chain_rules.push(Rule::new(
                INBOUND_CHAIN,
                &["-p", "tcp", "--dport", &port(p), "-j", "RETURN"],
            ));
        }
    }
    match &config.inbound_ports {
        InboundPorts::All => {
            chain_rules.push(Rule::new(
                INBOUND_CHAIN,
                &["-p", "tcp", "-j", INBOUND_REDIRECT_CHAIN],
            ));
        }
        InboundPorts::Only(ports) => {
            for p in ports {
                chain_rules.push(Rule::new(
                    INBOUND_CHAIN,
                    &[
                        "-p",
                        "tcp",
                        "--dport",
                        &port(*p),
                        "-j",
                        INBOUND_REDIRECT_CHAIN,
                    ],
                ));
            }
        }
        InboundPorts::None => {}
    }

    // Outbound. The proxy's own connections must never be captured, or every upstream connection it opens
    // would come straight back to it: an infinite loop. That rule therefore comes first.
    let uid = config.proxy_uid.to_string();
    chain_rules.push(Rule::new(
        OUTPUT_CHAIN,
        &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
    ));
    if let Some(gid) = config.proxy_gid {
        let gid = gid.to_string();
        chain_rules.push(Rule::new(
            OUTPUT_CHAIN,
            &["-m", "owner", "--gid-owner", &gid, "-j", "RETURN"],
        ));
    }
    // Connections leaving through loopback (127.0.0.0/8, ::1 and the pod's own addresses) stay inside the
    // pod: the app talking to itself or to the proxy's admin port. Capturing them would only add a hop. This
    // is the simple form of Istio's loopback handling; because the proxy forwards inbound traffic to the
    // app's own address as the excluded uid, it needs no special case here.
    chain_rules.push(Rule::new(OUTPUT_CHAIN, &["-o", "lo", "-j", "RETURN"]));
    for p in &config.exclude_outbound_ports {
        chain_rules.push(Rule::new(
            OUTPUT_CHAIN,
            &["-p", "tcp", "--dport", &port(*p), "-j", "RETURN"],
        ));
    }
    let want_v6 = family == Family::V6;
    for cidr in config
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| c.is_ipv6() == want_v6)
    {
        chain_rules.push(Rule::new(
            OUTPUT_CHAIN,
            &["-d", &cidr.to_string(), "-j", "RETURN"],
        ));
    }
    chain_rules.push(Rule::new(OUTPUT_CHAIN, &["-j", OUTBOUND_REDIRECT_CHAIN]));

    let jumps = vec![
        Rule::new("PREROUTING", &["-p", "tcp", "-j", INBOUND_CHAIN]),
        Rule::new("OUTPUT", &["-p", "tcp", "-j", OUTPUT_CHAIN]),
    ];
    RuleSet { chain_rules, jumps }
}

/// The commands a fresh install runs, in order (what `--dry-run` prints): create the chains, fill them,
/// then add the jumps so no traffic enters a half-filled chain. On a live table `install` skips the `-N` of
/// chains that exist (flushing them instead) and the `-A` of jumps that `-C` finds.
pub fn install_plan(rules: &RuleSet) -> Vec<Vec<String>> {
    let mut plan: Vec<Vec<String>> = OWN_CHAINS.iter().map(|c| chain_args("-N", c)).collect();
    plan.extend(rules.chain_rules.iter().map(|r| r.args("-A")));
    plan.extend(rules.jumps.iter().map(|r| r.args("-A")));
    plan
}

/// The commands that remove a full install (what `--uninstall --dry-run` prints): the jumps first so
/// traffic stops entering our chains, then flush every chain (they reference each other) and delete them.
pub fn uninstall_plan(rules: &RuleSet) -> Vec<Vec<String>> {
    let mut plan: Vec<Vec<String>> = rules.jumps.iter().map(|r| r.args("-D")).collect();
    plan.extend(OWN_CHAINS.iter().map(|c| chain_args("-F", c)));
    plan.extend(OWN_CHAINS.iter().map(|c| chain_args("-X", c)));
    plan
}

/// `-t nat <op> CHAIN`.
pub fn chain_args(op: &str, chain: &str) -> Vec<String> {
    vec![
        "-t".to_owned(),
        TABLE.to_owned(),
        op.to_owned(),
        chain.to_owned(),
    ]
}

/// Renders a command for display, quoting arguments a shell would split or expand, so `--dry-run` output
/// can be pasted into a shell as is.
pub fn render(program: &str, args: &[String]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        let plain = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./:,=+@%".contains(c));
        if plain {
            line.push_str(arg);
        } else {
            line.push('\'');
            line.push_str(&arg.replace('\'', r"'\''"));
            line.push('\'');
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::tests::config;

    fn lines(plan: &[Vec<String>]) -> Vec<String> {
        plan.iter().map(|args| render("iptables", args)).collect()
    }

    #[test]
    fn default_install_plan() {
        let plan = install_plan(&generate(&config(&[]), Family::V4));
        assert_eq!(
            lines(&plan),
            [
                "iptables -t nat -N SHOAL_IN_REDIRECT",
                "iptables -t nat -N SHOAL_REDIRECT",
                "iptables -t nat -N SHOAL_INBOUND",
                "iptables -t nat -N SHOAL_OUTPUT",
                "iptables -t nat -A SHOAL_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "iptables -t nat -A SHOAL_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "iptables -t nat -A SHOAL_INBOUND -p tcp --dport 15021 -j RETURN",
                "iptables -t nat -A SHOAL_INBOUND -p tcp -j SHOAL_IN_REDIRECT",
                "iptables -t nat -A SHOAL_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -o lo -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -j SHOAL_REDIRECT",
                "iptables -t nat -A PREROUTING -p tcp -j SHOAL_INBOUND",
                "iptables -t nat -A OUTPUT -p tcp -j SHOAL_OUTPUT",
            ]
        );
    }

    #[test]
    fn excludes_and_includes() {
        let config = config(&[
            "--inbound-port",
            "16006",
            "--outbound-port",
            "16001",
            "--admin-port",
            "9901",
            "--proxy-uid",
            "2000",
            "--proxy-gid",
            "3000",
            "--inbound-ports",
            "8080,9901",
            "--exclude-inbound-ports",
            "22,9901",
            "--exclude-outbound-ports",
            "3306",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,169.254.169.254",
        ]);
        let rules = generate(&config, Family::V4);
        let got: Vec<String> = rules
            .chain_rules
            .iter()
            .map(|r| render("iptables", &r.args("-A")))
            .collect();
        assert_eq!(
            got,
            [
                "iptables -t nat -A SHOAL_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
                "iptables -t nat -A SHOAL_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
                // The admin port is excluded once even though it is also listed, and exclusions precede
                // the include list, so 9901 stays uncaptured.
                "iptables -t nat -A SHOAL_INBOUND -p tcp --dport 9901 -j RETURN",
                "iptables -t nat -A SHOAL_INBOUND -p tcp --dport 22 -j RETURN",
                "iptables -t nat -A SHOAL_INBOUND -p tcp --dport 8080 -j SHOAL_IN_REDIRECT",
                "iptables -t nat -A SHOAL_INBOUND -p tcp --dport 9901 -j SHOAL_IN_REDIRECT",
                "iptables -t nat -A SHOAL_OUTPUT -m owner --uid-owner 2000 -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -m owner --gid-owner 3000 -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -o lo -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -p tcp --dport 3306 -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "iptables -t nat -A SHOAL_OUTPUT -j SHOAL_REDIRECT",
            ]
        );
    }

    #[test]
    fn no_inbound_capture_leaves_the_inbound_chain_empty() {
        let rules = generate(&config(&["--inbound-ports", ""]), Family::V4);
        assert!(rules.chain_rules.iter().all(|r| r.chain != INBOUND_CHAIN));
        // The jump stays so the rule set's shape never depends on flags (see `generate`).
        assert_eq!(rules.jumps.len(), 2);
    }

    #[test]
    fn cidrs_go_to_their_family() {
        let config = config(&["--ipv6", "--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8"]);
        let dests = |family| {
            generate(&config, family)
                .chain_rules
                .into_iter()
                .filter(|r| r.spec.first().is_some_and(|a| a == "-d"))
                .map(|r| r.spec[1].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(dests(Family::V4), ["10.0.0.0/8"]);
        assert_eq!(dests(Family::V6), ["fd00::/8"]);
    }

    #[test]
    fn uninstall_plan_removes_jumps_then_chains() {
        let plan = lines(&uninstall_plan(&generate(&config(&[]), Family::V4)));
        assert_eq!(
            plan[0],
            "iptables -t nat -D PREROUTING -p tcp -j SHOAL_INBOUND"
        );
        assert_eq!(plan[1], "iptables -t nat -D OUTPUT -p tcp -j SHOAL_OUTPUT");
        assert_eq!(plan.len(), 2 + 2 * OWN_CHAINS.len());
        assert!(plan[2..6].iter().all(|l| l.contains(" -F SHOAL_")));
        assert!(plan[6..].iter().all(|l| l.contains(" -X SHOAL_")));
    }

    #[test]
    fn render_quotes_what_a_shell_would_split() {
        let args = [
            "-m".to_owned(),
            "comment".to_owned(),
            "a b".to_owned(),
            "it's".to_owned(),
            String::new(),
        ];
        assert_eq!(
            render("iptables", &args),
            r"iptables -m comment 'a b' 'it'\''s' ''"
        );
    }
}
