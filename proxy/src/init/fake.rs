//! A simulated nat table behind the [`Iptables`] trait, for unit tests.
//!
//! It models the parts of iptables' behaviour the install/uninstall logic relies on — `-S` listing,
//! `-N`/`-F`/`-X` on chains, `-A`/`-C`/`-D` on rules, the exit codes and refusals (existing chain,
//! referenced chain, unknown jump target) — and records every call, so tests can assert both the
//! resulting table and the commands that produced it.

use super::InitError;
use super::iptables::{Iptables, Output};

/// Targets that are not chains, so `-A … -j TARGET` needs no chain of that name.
const BUILTIN_TARGETS: [&str; 8] = [
    "ACCEPT",
    "DROP",
    "RETURN",
    "REDIRECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "LOG",
];

#[derive(Debug)]
struct Chain {
    name: String,
    builtin: bool,
    rules: Vec<Vec<String>>,
}

/// The fake; starts as an empty nat table with its four built-in chains.
#[derive(Debug)]
pub(crate) struct FakeIptables {
    chains: Vec<Chain>,
    /// Every argument vector passed to `run`, in order.
    pub(crate) calls: Vec<Vec<String>>,
    /// Refuse every command the way iptables does without NET_ADMIN.
    pub(crate) deny: bool,
    /// Make every `-C` exit with this code (e.g. 2: a parameter problem).
    pub(crate) fail_checks_with: Option<i32>,
}

impl FakeIptables {
    pub(crate) fn new() -> Self {
        let builtin = |name: &str| Chain {
            name: name.to_owned(),
            builtin: true,
            rules: Vec::new(),
        };
        Self {
            chains: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
                .into_iter()
                .map(builtin)
                .collect(),
            calls: Vec::new(),
            deny: false,
            fail_checks_with: None,
        }
    }

    /// Applies commands (without the `-t nat` prefix) as someone else would have, not recorded as calls.
    pub(crate) fn preload(&mut self, commands: &[&[&str]]) {
        for command in commands {
            let mut args = vec!["-t".to_owned(), "nat".to_owned()];
            args.extend(command.iter().map(|s| (*s).to_owned()));
            let output = self.apply(&args);
            assert!(output.success(), "preload {command:?}: {}", output.stderr);
        }
    }

    /// The table as `iptables -t nat -S` prints it.
    pub(crate) fn save(&self) -> String {
        let mut out = String::new();
        for chain in &self.chains {
            if chain.builtin {
                out.push_str(&format!("-P {} ACCEPT\n", chain.name));
            } else {
                out.push_str(&format!("-N {}\n", chain.name));
            }
        }
        for chain in &self.chains {
            for rule in &chain.rules {
                out.push_str(&format!("-A {}", chain.name));
                for word in rule {
                    out.push(' ');
                    out.push_str(&quote(word));
                }
                out.push('\n');
            }
        }
        out
    }

    fn chain(&mut self, name: &str) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| c.name == name)
    }

    fn apply(&mut self, args: &[String]) -> Output {
        let ok = || Output {
            code: Some(0),
            ..Output::default()
        };
        let fail = |code: i32, message: &str| Output {
            code: Some(code),
            stdout: String::new(),
            stderr: format!("iptables: {message}\n"),
        };
        let [t, table, op, rest @ ..] = args else {
            return fail(2, "no command");
        };
        assert_eq!(
            (t.as_str(), table.as_str()),
            ("-t", "nat"),
            "every command names the nat table"
        );
        if op == "-S" {
            return Output {
                code: Some(0),
                stdout: self.save(),
                stderr: String::new(),
            };
        }
        let [chain_name, spec @ ..] = rest else {
            return fail(2, "no chain");
        };
        let exists = self.chains.iter().any(|c| &c.name == chain_name);
        match op.as_str() {
            "-N" if exists => fail(1, "Chain already exists."),
            "-N" => {
                self.chains.push(Chain {
                    name: chain_name.clone(),
                    builtin: false,
                    rules: Vec::new(),
                });
                ok()
            }
            _ if !exists => fail(1, "No chain/target/match by that name."),
            "-F" => {
                if let Some(c) = self.chain(chain_name) {
                    c.rules.clear();
                }
                ok()
            }
            "-X" => {
                let referenced = self
                    .chains
                    .iter()
                    .any(|c| c.rules.iter().any(|r| target(r) == Some(chain_name)));
                let chain = self
                    .chains
                    .iter()
                    .find(|c| &c.name == chain_name)
                    .map(|c| (c.builtin, c.rules.len()));
                match chain {
                    Some((true, _)) => fail(2, "Can't delete built-in chain."),
                    Some((_, n)) if n > 0 => fail(1, "Directory not empty."),
                    _ if referenced => fail(1, "CHAIN_DEL failed (Device or resource busy)"),
                    _ => {
                        self.chains.retain(|c| &c.name != chain_name);
                        ok()
                    }
                }
            }
            "-A" => match target(spec) {
                Some(t)
                    if !BUILTIN_TARGETS.contains(&t)
                        && !self.chains.iter().any(|c| c.name == t) =>
                {
                    fail(2, &format!("Couldn't load target `{t}'"))
                }
                _ => {
                    if let Some(c) = self.chain(chain_name) {
                        c.rules.push(spec.to_vec());
                    }
                    ok()
                }
            },
            "-C" => match self.fail_checks_with {
                Some(code) => fail(code, "Bad argument"),
                None if self
                    .chains
                    .iter()
                    .any(|c| &c.name == chain_name && c.rules.iter().any(|r| r == spec)) =>
                {
                    ok()
                }
                None => fail(1, "Bad rule (does a matching rule exist in that chain?)."),
            },
            "-D" => {
                let chain = self.chain(chain_name).expect("exists");
                match chain.rules.iter().position(|r| r == spec) {
                    Some(at) => {
                        chain.rules.remove(at);
                        ok()
                    }
                    None => fail(1, "Bad rule (does a matching rule exist in that chain?)."),
                }
            }
            other => fail(2, &format!("unsupported command {other}")),
        }
    }
}

impl Iptables for FakeIptables {
    fn program(&self) -> &str {
        "iptables"
    }

    fn run(&mut self, args: &[String]) -> Result<Output, InitError> {
        self.calls.push(args.to_vec());
        if self.deny {
            return Ok(Output {
                code: Some(4),
                stdout: String::new(),
                stderr: "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied \
                         (you must be root)\n"
                    .to_owned(),
            });
        }
        Ok(self.apply(args))
    }
}

fn target(spec: &[String]) -> Option<&str> {
    let at = spec.iter().position(|a| a == "-j" || a == "-g")?;
    spec.get(at + 1).map(String::as_str)
}

/// Quotes like `iptables -S`: double quotes around words with spaces, escaping quotes and backslashes.
fn quote(word: &str) -> String {
    if !word.is_empty() && !word.contains([' ', '"', '\\']) {
        return word.to_owned();
    }
    format!("\"{}\"", word.replace('\\', r"\\").replace('"', "\\\""))
}
