//! Applying a [`RuleSet`] to the live nat table idempotently, and removing it again.
//!
//! Commands go through the small [`Iptables`] trait so the install/uninstall logic (which commands run,
//! in which order, depending on what the table already holds) is tested against a simulated table;
//! [`SystemIptables`] is the real implementation, a `std::process::Command` per call.

use std::io;
use std::process::{Command, Stdio};

use super::InitError;
use super::rules::{OWN_CHAINS, RuleSet, chain_args, render};

/// What one iptables invocation produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when the process was killed by a signal.
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs one iptables-compatible binary (`iptables`, `ip6tables`, `iptables-legacy`, or a test double).
pub trait Iptables {
    /// The binary's name as the user gave it, for messages.
    fn program(&self) -> &str;
    /// Runs the binary with `args`. A non-zero exit is an `Ok` [`Output`]; `Err` means it could not be
    /// started at all (missing binary, exec failure).
    fn run(&mut self, args: &[String]) -> Result<Output, InitError>;
}

/// The real thing: spawns the binary found on `PATH` (or at the given path).
#[derive(Debug, Clone)]
pub struct SystemIptables {
    program: String,
}

impl SystemIptables {
    /// A runner for `program`, e.g. `iptables` or `/usr/sbin/iptables-legacy`.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }
}

impl Iptables for SystemIptables {
    fn program(&self) -> &str {
        &self.program
    }

    fn run(&mut self, args: &[String]) -> Result<Output, InitError> {
        tracing::debug!(command = %render(&self.program, args), "running");
        let output = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => InitError::IptablesNotFound {
                    program: self.program.clone(),
                },
                _ => InitError::Spawn {
                    command: render(&self.program, args),
                    source,
                },
            })?;
        Ok(Output {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// What [`install`] did, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Own chains that did not exist and were created.
    pub chains_created: usize,
    /// Own chains that existed and were flushed before being refilled.
    pub chains_flushed: usize,
    /// Rules appended to our own chains.
    pub rules: usize,
    /// Jumps from PREROUTING/OUTPUT that were added.
    pub jumps_added: usize,
    /// Jumps that `-C` found already present (a re-run).
    pub jumps_present: usize,
}

/// What [`uninstall`] did, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallReport {
    /// Rules outside our chains that jumped into them, now deleted.
    pub jumps_removed: usize,
    /// Own chains flushed and deleted.
    pub chains_removed: usize,
}

/// Installs `rules`, leaving exactly one copy of each however often it runs.
///
/// Our chains are created if absent or flushed if present, then refilled, which replaces whatever an
/// earlier run (even with other flags) put there. The jumps from the built-in chains are the only rules
/// outside our chains, so they are added only when `iptables -C` reports them absent.
pub fn install(ipt: &mut dyn Iptables, rules: &RuleSet) -> Result<InstallReport, InitError> {
    // Listing first doubles as the permission check: it fails cleanly, before anything is changed.
    let table = list(ipt)?;
    let mut report = InstallReport::default();
    for chain in OWN_CHAINS {
        if table.has_chain(chain) {
            exec(ipt, &chain_args("-F", chain))?;
            report.chains_flushed += 1;
        } else {
            exec(ipt, &chain_args("-N", chain))?;
            report.chains_created += 1;
        }
    }
    for rule in &rules.chain_rules {
        exec(ipt, &rule.args("-A"))?;
        report.rules += 1;
    }
    // Jumps last: traffic starts entering our chains only once they are complete.
    for jump in &rules.jumps {
        if check(ipt, &jump.args("-C"))? {
            report.jumps_present += 1;
        } else {
            exec(ipt, &jump.args("-A"))?;
            report.jumps_added += 1;
        }
    }
    Ok(report)
}

/// Removes everything [`install`] added and nothing else; succeeds when nothing is installed.
///
/// The jumps to delete are taken from the live listing rather than from the current flags, so jumps added
/// by an earlier run with a different rule shape (or added twice by hand) are removed as well; `-X` would
/// refuse to delete a chain that is still referenced.
pub fn uninstall(ipt: &mut dyn Iptables) -> Result<UninstallReport, InitError> {
    let table = list(ipt)?;
    let mut report = UninstallReport::default();
    for rule in &table.rules {
        let ours = |c: &str| OWN_CHAINS.contains(&c);
        if !ours(&rule.chain) && rule.target().is_some_and(ours) {
            let mut args = chain_args("-D", &rule.chain);
            args.extend(rule.spec.iter().cloned());
            exec(ipt, &args)?;
            report.jumps_removed += 1;
        }
    }
    // Flush all before deleting any: our chains jump to each other, and a referenced chain cannot go.
    let present: Vec<&str> = OWN_CHAINS
        .into_iter()
        .filter(|c| table.has_chain(c))
        .collect();
    for chain in &present {
        exec(ipt, &chain_args("-F", chain))?;
    }
    for chain in &present {
        exec(ipt, &chain_args("-X", chain))?;
        report.chains_removed += 1;
    }
    Ok(report)
}

/// Runs a command that must succeed.
fn exec(ipt: &mut dyn Iptables, args: &[String]) -> Result<Output, InitError> {
    let output = ipt.run(args)?;
    if output.success() {
        Ok(output)
    } else {
        Err(failure(ipt.program(), args, &output))
    }
}

/// Runs an `-C` check: exit 0 means present, 1 means absent, anything else is an error (a typo'd match,
/// a missing kernel module, no permission) that must not be mistaken for "absent".
fn check(ipt: &mut dyn Iptables, args: &[String]) -> Result<bool, InitError> {
    let output = ipt.run(args)?;
    match output.code {
        Some(0) => Ok(true),
        Some(1) if !is_permission_error(&output.stderr) => Ok(false),
        _ => Err(failure(ipt.program(), args, &output)),
    }
}

/// Turns a failed command into the error that says what to check.
fn failure(program: &str, args: &[String], output: &Output) -> InitError {
    let command = render(program, args);
    let stderr = output.stderr.trim().to_owned();
    if is_permission_error(&stderr) {
        InitError::PermissionDenied { command, stderr }
    } else {
        let status = match output.code {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        InitError::CommandFailed {
            command,
            status,
            stderr,
        }
    }
}

/// iptables has no dedicated exit code for "not allowed"; these are the messages of the nft and legacy
/// backends (netlink EPERM, the table socket, the xtables lock file) when run without NET_ADMIN or root.
fn is_permission_error(stderr: &str) -> bool {
    let stderr = stderr.to_ascii_lowercase();
    [
        "permission denied",
        "you must be root",
        "operation not permitted",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// The nat table as `iptables -t nat -S` prints it.
#[derive(Debug, Default)]
struct Listing {
    chains: Vec<String>,
    rules: Vec<ListedRule>,
}

#[derive(Debug)]
struct ListedRule {
    chain: String,
    spec: Vec<String>,
}

impl ListedRule {
    /// The `-j`/`-g` target, if any.
    fn target(&self) -> Option<&str> {
        let at = self
            .spec
            .iter()
            .position(|a| a == "-j" || a == "-g" || a == "--jump" || a == "--goto")?;
        self.spec.get(at + 1).map(String::as_str)
    }
}

impl Listing {
    fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    fn parse(text: &str) -> Self {
        let mut listing = Self::default();
        for line in text.lines() {
            let mut words = split_words(line).into_iter();
            match (words.next().as_deref(), words.next()) {
                (Some("-P" | "-N"), Some(chain)) => listing.chains.push(chain),
                (Some("-A"), Some(chain)) => listing.rules.push(ListedRule {
                    chain,
                    spec: words.collect(),
                }),
                _ => {}
            }
        }
        listing
    }
}

fn list(ipt: &mut dyn Iptables) -> Result<Listing, InitError> {
    let output = exec(ipt, &["-t".to_owned(), "nat".to_owned(), "-S".to_owned()])?;
    Ok(Listing::parse(&output.stdout))
}

/// Splits an `iptables -S` line into arguments. iptables double-quotes values containing spaces (e.g.
/// comments) and backslash-escapes quotes and backslashes inside them, so the words can be fed back to
/// `-D` unchanged.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::fake::FakeIptables;
    use crate::init::rules::{Family, generate};
    use crate::init::tests::config;

    fn default_rules() -> RuleSet {
        generate(&config(&[]), Family::V4)
    }

    #[test]
    fn fresh_install_creates_chains_rules_and_jumps() {
        let mut ipt = FakeIptables::new();
        let report = install(&mut ipt, &default_rules()).unwrap();
        assert_eq!(
            report,
            InstallReport {
                chains_created: 4,
                chains_flushed: 0,
                rules: 7,
                jumps_added: 2,
                jumps_present: 0
            }
        );
        let listing = ipt.save();
        assert!(
            listing.contains("-A PREROUTING -p tcp -j SHOAL_INBOUND\n"),
            "{listing}"
        );
        assert!(
            listing.contains("-A OUTPUT -p tcp -j SHOAL_OUTPUT\n"),
            "{listing}"
        );
        assert!(
            listing.contains("-A SHOAL_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"),
            "{listing}"
        );
    }

    #[test]
    fn second_install_adds_no_duplicates() {
        let mut ipt = FakeIptables::new();
        install(&mut ipt, &default_rules()).unwrap();
        let after_first = ipt.save();
        ipt.calls.clear();

        let report = install(&mut ipt, &default_rules()).unwrap();
        assert_eq!(report.jumps_added, 0);
        assert_eq!(report.jumps_present, 2);
        assert_eq!(report.chains_flushed, 4);
        assert_eq!(ipt.save(), after_first);
        // The re-run checked the jumps and never appended to a built-in chain.
        let rendered: Vec<String> = ipt.calls.iter().map(|a| a.join(" ")).collect();
        assert!(
            rendered
                .iter()
                .any(|c| c == "-t nat -C PREROUTING -p tcp -j SHOAL_INBOUND")
        );
        assert!(!rendered.iter().any(|c| c.starts_with("-t nat -A PREROUTING") || c.starts_with("-t nat -A OUTPUT")));
        assert!(!rendered.iter().any(|c| c.contains(" -N ")));
    }

    #[test]
    fn reinstall_with_other_flags_replaces_chain_contents() {
        let mut ipt = FakeIptables::new();
        install(&mut ipt, &default_rules()).unwrap();
        install(
            &mut ipt,
            &generate(&config(&["--exclude-outbound-ports", "22"]), Family::V4),
        )
        .unwrap();
        let listing = ipt.save();
        assert_eq!(
            listing.matches("-A SHOAL_OUTPUT -o lo -j RETURN").count(),
            1,
            "{listing}"
        );
        assert_eq!(
            listing.matches("--dport 22 -j RETURN").count(),
            1,
            "{listing}"
        );
        assert_eq!(listing.matches("-j SHOAL_OUTPUT").count(), 1, "{listing}");
    }

    #[test]
    fn uninstall_restores_the_table_exactly() {
        let mut ipt = FakeIptables::new();
        // Someone else's rules (a CNI, a user) must survive untouched, including one in OUTPUT.
        ipt.preload(&[
            &["-N", "CNI_HOSTPORT"],
            &[
                "-A",
                "PREROUTING",
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-j",
                "CNI_HOSTPORT",
            ],
            &["-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN"],
        ]);
        let before = ipt.save();

        install(&mut ipt, &default_rules()).unwrap();
        install(&mut ipt, &default_rules()).unwrap();
        let report = uninstall(&mut ipt).unwrap();
        assert_eq!(
            report,
            UninstallReport {
                jumps_removed: 2,
                chains_removed: 4
            }
        );
        assert_eq!(ipt.save(), before);
    }

    #[test]
    fn uninstall_removes_jumps_of_any_shape() {
        // A jump with a comment and one added twice by hand: the listing, not the current flags, decides.
        let mut ipt = FakeIptables::new();
        install(&mut ipt, &default_rules()).unwrap();
        ipt.preload(&[
            &[
                "-A",
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                "old \"shoal\" jump",
                "-j",
                "SHOAL_OUTPUT",
            ],
            &["-A", "PREROUTING", "-p", "tcp", "-j", "SHOAL_INBOUND"],
        ]);
        let report = uninstall(&mut ipt).unwrap();
        assert_eq!(report.jumps_removed, 4);
        assert!(!ipt.save().contains("SHOAL_"), "{}", ipt.save());
    }

    #[test]
    fn uninstall_of_nothing_succeeds_and_changes_nothing() {
        let mut ipt = FakeIptables::new();
        let before = ipt.save();
        assert_eq!(uninstall(&mut ipt).unwrap(), UninstallReport::default());
        assert_eq!(ipt.save(), before);
        // Only the listing ran.
        assert_eq!(ipt.calls.len(), 1);
    }

    #[test]
    fn permission_denied_is_recognised_before_any_change() {
        let mut ipt = FakeIptables::new();
        ipt.deny = true;
        let err = install(&mut ipt, &default_rules()).unwrap_err();
        assert!(matches!(err, InitError::PermissionDenied { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("NET_ADMIN") && text.contains("root"),
            "{text}"
        );
        assert_eq!(ipt.calls.len(), 1);
    }

    #[test]
    fn check_errors_other_than_absent_are_not_treated_as_absent() {
        let mut ipt = FakeIptables::new();
        ipt.fail_checks_with = Some(2);
        let err = install(&mut ipt, &default_rules()).unwrap_err();
        assert!(matches!(err, InitError::CommandFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("-C PREROUTING"), "{err}");
    }

    #[test]
    fn split_words_handles_quotes() {
        assert_eq!(
            split_words(r#"-A OUTPUT -m comment --comment "a \"b\" c" -j X"#),
            [
                "-A",
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                r#"a "b" c"#,
                "-j",
                "X"
            ]
        );
        assert_eq!(
            split_words(r#"-A X --comment """#),
            ["-A", "X", "--comment", ""]
        );
    }
}
