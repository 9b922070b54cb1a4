//! `shoal-proxy init`: installs (or removes) the iptables rules that send a pod's TCP traffic through the sidecar.
//!
//! This is what the Kubernetes init container runs before the app starts. Inbound TCP arriving at the pod is
//! redirected to the proxy's inbound port, outbound TCP from the pod's processes (except the proxy's own) to
//! its outbound port; docs/init.md lists the exact rules. The work is split so most of it is testable
//! without root: [`config`] validates the flags, [`rules`] generates the rules as pure data, and
//! [`iptables`] applies them idempotently through a small trait that tests replace with a simulated table.

pub mod config;
pub mod iptables;
pub mod rules;

#[cfg(test)]
mod fake;

use std::io::Write;

use clap::builder::BoolishValueParser;

use self::config::InitConfig;
use self::iptables::{Iptables, SystemIptables};
use self::rules::Family;

/// Arguments of `shoal-proxy init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Port of the proxy's inbound listener; captured inbound TCP is redirected here.
    #[arg(long, env = "SHOAL_INIT_INBOUND_PORT", default_value = "15006")]
    pub inbound_port: u16,

    /// Port of the proxy's outbound listener; captured outbound TCP is redirected here.
    #[arg(long, env = "SHOAL_INIT_OUTBOUND_PORT", default_value = "15001")]
    pub outbound_port: u16,

    /// The proxy's admin port; never captured inbound, so health probes and metric scrapes reach the proxy.
    #[arg(long, env = "SHOAL_INIT_ADMIN_PORT", default_value = "15021")]
    pub admin_port: u16,

    /// The uid the proxy runs as; its connections are never captured (that would loop them back to it).
    #[arg(long, env = "SHOAL_INIT_PROXY_UID", default_value = "1337")]
    pub proxy_uid: u32,

    /// Optionally, a gid whose processes' connections are never captured either.
    #[arg(long, env = "SHOAL_INIT_PROXY_GID")]
    pub proxy_gid: Option<u32>,

    /// Inbound destination ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(long, env = "SHOAL_INIT_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: String,

    /// Comma-separated inbound destination ports never captured (the admin port is always excluded).
    #[arg(long, env = "SHOAL_INIT_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,

    /// Comma-separated outbound destination ports never captured.
    #[arg(long, env = "SHOAL_INIT_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: String,

    /// Comma-separated outbound destination ranges never captured (`10.0.0.0/8`, `169.254.169.254`).
    #[arg(long, env = "SHOAL_INIT_EXCLUDE_OUTBOUND_CIDRS", default_value = "")]
    pub exclude_outbound_cidrs: String,

    /// Also install (or remove) the rules for IPv6 with ip6tables.
    #[arg(long, env = "SHOAL_INIT_IPV6", value_parser = BoolishValueParser::new())]
    pub ipv6: bool,

    /// Remove the rules and chains init installed instead of installing them.
    #[arg(long, env = "SHOAL_INIT_UNINSTALL", value_parser = BoolishValueParser::new())]
    pub uninstall: bool,

    /// Print the commands a fresh install (or uninstall) runs, without running anything.
    #[arg(long, env = "SHOAL_INIT_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// The iptables binary: a name looked up on PATH or a path (e.g. `iptables-legacy`).
    #[arg(long, env = "SHOAL_INIT_IPTABLES", default_value = "iptables")]
    pub iptables: String,

    /// The ip6tables binary, used with `--ipv6`.
    #[arg(long, env = "SHOAL_INIT_IP6TABLES", default_value = "ip6tables")]
    pub ip6tables: String,
}

/// Errors of `shoal-proxy init`; Display says what to check.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag's value is malformed or contradicts another flag.
    #[error("invalid {flag}={value:?}: {expected}")]
    InvalidFlag {
        /// The flag, e.g. `--exclude-outbound-cidrs`.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what was expected.
        expected: String,
    },

    /// The iptables binary could not be found.
    #[error(
        "{program} not found on PATH: install iptables (nft or legacy) in the init container's image \
         (Debian/Ubuntu: apt-get install iptables; Alpine: apk add iptables), or name the binary with \
         --iptables / --ip6tables"
    )]
    IptablesNotFound {
        /// The binary that was looked for.
        program: String,
    },

    /// iptables refused because the process may not change the network namespace's firewall.
    #[error(
        "permission denied: `{command}` failed with {stderr:?}. shoal-proxy init needs root or the NET_ADMIN \
         capability (and NET_RAW) in the pod's network namespace; in Kubernetes give the init container \
         securityContext.capabilities.add: [NET_ADMIN, NET_RAW] and runAsUser: 0"
    )]
    PermissionDenied {
        /// The command that was refused.
        command: String,
        /// What iptables printed.
        stderr: String,
    },

    /// An iptables command failed for another reason.
    #[error(
        "`{command}` failed ({status}): {stderr:?}. Check that the kernel provides the nat table with the \
         REDIRECT target and the owner match (iptable_nat / nf_nat, xt_REDIRECT, xt_owner, or their nf_tables \
         equivalents) and that the iptables backend (nft or legacy) is the one the node uses"
    )]
    CommandFailed {
        /// The command that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// What iptables printed.
        stderr: String,
    },

    /// The binary exists but could not be started.
    #[error("could not run `{command}`: {source}; check that the binary is executable")]
    Spawn {
        /// The command that could not be started.
        command: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `shoal-proxy init`: validates the flags, then prints (`--dry-run`), installs or uninstalls the rules
/// for IPv4 and, with `--ipv6`, IPv6. Prints one summary line per address family.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    let config = InitConfig::from_args(args)?;
    let families = families(args, &config);
    if args.dry_run {
        print!("{}", dry_run(&config, &families, args.uninstall));
        // A closed stdout only loses the listing, which is all a dry run does; nothing to recover.
        let _ = std::io::stdout().flush();
        return Ok(());
    }
    for (family, program) in families {
        let mut runner = SystemIptables::new(program);
        println!("{}", apply(&mut runner, &config, family, args.uninstall)?);
    }
    Ok(())
}

/// The address families to handle and the binary for each.
fn families<'a>(args: &'a InitArgs, config: &InitConfig) -> Vec<(Family, &'a str)> {
    let mut families = vec![(Family::V4, args.iptables.as_str())];
    if config.ipv6 {
        families.push((Family::V6, args.ip6tables.as_str()));
    }
    families
}

/// The `--dry-run` listing: one shell command per line.
fn dry_run(config: &InitConfig, families: &[(Family, &str)], uninstall: bool) -> String {
    let mut out = String::new();
    for (family, program) in families {
        let rules = rules::generate(config, *family);
        let plan = if uninstall {
            rules::uninstall_plan(&rules)
        } else {
            rules::install_plan(&rules)
        };
        for args in plan {
            out.push_str(&rules::render(program, &args));
            out.push('\n');
        }
    }
    out
}

/// Installs or uninstalls one family's rules through `runner`; returns the summary line.
fn apply(
    runner: &mut dyn Iptables,
    config: &InitConfig,
    family: Family,
    uninstall: bool,
) -> Result<String, InitError> {
    let program = runner.program().to_owned();
    if uninstall {
        let report = iptables::uninstall(runner)?;
        return Ok(if report.chains_removed == 0 && report.jumps_removed == 0 {
            format!("shoal-proxy init: {program}: nothing to uninstall")
        } else {
            format!(
                "shoal-proxy init: {program}: removed {} jump rule(s) and {} chain(s)",
                report.jumps_removed, report.chains_removed
            )
        });
    }
    let report = iptables::install(runner, &rules::generate(config, family))?;
    Ok(format!(
        "shoal-proxy init: {program}: capturing inbound TCP → port {} and outbound TCP → port {} (proxy uid {} \
         excluded); {} rule(s) in {} chain(s) ({} created, {} refreshed), {} jump(s) added, {} already present",
        config.inbound_port,
        config.outbound_port,
        config.proxy_uid,
        report.rules,
        report.chains_created + report.chains_flushed,
        report.chains_created,
        report.chains_flushed,
        report.jumps_added,
        report.jumps_present,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::fake::FakeIptables;
    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    /// Parses `shoal-proxy init` flags as clap would (defaults included).
    pub(crate) fn args(flags: &[&str]) -> InitArgs {
        Cli::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
            .init
    }

    /// A validated config from flags.
    pub(crate) fn config(flags: &[&str]) -> InitConfig {
        InitConfig::from_args(&args(flags)).unwrap_or_else(|e| panic!("{flags:?}: {e}"))
    }

    #[test]
    fn dry_run_lists_both_families_with_their_binaries() {
        let args = args(&["--ipv6", "--ip6tables", "ip6tables-legacy"]);
        let config = InitConfig::from_args(&args).unwrap();
        let text = dry_run(&config, &families(&args, &config), false);
        assert!(
            text.starts_with("iptables -t nat -N SHOAL_IN_REDIRECT\n"),
            "{text}"
        );
        assert!(
            text.contains("\nip6tables-legacy -t nat -A OUTPUT -p tcp -j SHOAL_OUTPUT\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 26);

        let text = dry_run(&config, &families(&args, &config)[..1], true);
        assert!(
            text.starts_with("iptables -t nat -D PREROUTING -p tcp -j SHOAL_INBOUND\n"),
            "{text}"
        );
    }

    #[test]
    fn apply_install_twice_then_uninstall() {
        let config = config(&[]);
        let mut ipt = FakeIptables::new();
        let empty = ipt.save();
        let first = apply(&mut ipt, &config, Family::V4, false).unwrap();
        assert!(
            first.contains("2 jump(s) added, 0 already present"),
            "{first}"
        );
        let second = apply(&mut ipt, &config, Family::V4, false).unwrap();
        assert!(
            second.contains("0 jump(s) added, 2 already present"),
            "{second}"
        );
        let removed = apply(&mut ipt, &config, Family::V4, true).unwrap();
        assert!(
            removed.contains("removed 2 jump rule(s) and 4 chain(s)"),
            "{removed}"
        );
        assert_eq!(ipt.save(), empty);
        let again = apply(&mut ipt, &config, Family::V4, true).unwrap();
        assert!(again.contains("nothing to uninstall"), "{again}");
    }

    #[test]
    fn missing_binary_is_reported_with_what_to_install() {
        let mut args = args(&[]);
        args.iptables = "shoal-no-such-iptables".to_owned();
        let err = run(&args).unwrap_err();
        assert!(matches!(err, InitError::IptablesNotFound { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "shoal-no-such-iptables not found on PATH: install iptables (nft or legacy)"
            ),
            "{text}"
        );
    }

    #[test]
    fn invalid_flags_fail_before_anything_runs() {
        // The binary does not exist, so reaching execution would give a different error.
        let mut args = args(&["--exclude-outbound-ports", "22,abc"]);
        args.iptables = "shoal-no-such-iptables".to_owned();
        let err = run(&args).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid --exclude-outbound-ports=\"22,abc\""),
            "{err}"
        );
    }

    #[test]
    fn switches_take_no_value_on_the_command_line() {
        let on = args(&["--ipv6", "--uninstall", "--dry-run"]);
        assert!(on.ipv6 && on.uninstall && on.dry_run);
        let off = args(&[]);
        assert!(!off.ipv6 && !off.uninstall && !off.dry_run);
    }

    #[test]
    fn clap_rejects_out_of_range_ports_naming_the_flag() {
        let err = Cli::try_parse_from(["init", "--inbound-port", "70000"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--inbound-port"), "{err}");
    }
}
