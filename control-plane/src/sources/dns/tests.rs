use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::time::Instant;

use super::*;
use crate::discovery::Hub;
use crate::sources::file::DnsTarget;
use crate::sources::tests::endpoints;

#[test]
fn ttl_is_bounded_and_failures_back_off() {
    assert_eq!(bounded_ttl(Duration::ZERO), MIN_TTL);
    assert_eq!(
        bounded_ttl(Duration::from_secs(60)),
        Duration::from_secs(60)
    );
    assert_eq!(bounded_ttl(Duration::from_secs(86_400)), MAX_TTL);
    assert_eq!(retry_after(1), MIN_TTL);
    assert_eq!(retry_after(2), MIN_TTL * 2);
    assert_eq!(retry_after(4), MIN_TTL * 8);
    assert_eq!(retry_after(u32::MAX), MAX_TTL);
}

/// Answers from a script per host (the last answer repeats), recording when each host was asked.
struct Script {
    answers: Mutex<HashMap<String, VecDeque<Result<Resolved, String>>>>,
    calls: Mutex<Vec<(String, Duration)>>,
    start: Instant,
}

impl Script {
    fn new(answers: &[(&str, Vec<Result<Resolved, String>>)]) -> Arc<Self> {
        let answers = answers
            .iter()
            .map(|(h, a)| (h.to_string(), a.iter().cloned().collect()));
        Arc::new(Self {
            answers: Mutex::new(answers.collect()),
            calls: Mutex::default(),
            start: Instant::now(),
        })
    }

    /// Seconds since the start at which `host` was resolved.
    fn calls(&self, host: &str) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, t)| t.as_secs())
            .collect()
    }
}

impl Resolve for Script {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Resolved, String>> {
        let elapsed = self.start.elapsed();
        self.calls.lock().unwrap().push((host.to_string(), elapsed));
        let mut answers = self.answers.lock().unwrap();
        let queue = answers.get_mut(host).expect("unscripted host");
        let answer = if queue.len() > 1 {
            queue.pop_front()
        } else {
            queue.front().cloned()
        };
        let answer = answer.unwrap_or_else(|| Err("no answer".into()));
        async move { answer }.boxed()
    }
}

fn ok(addresses: &[&str], ttl_secs: u64) -> Result<Resolved, String> {
    Ok(Resolved {
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        ttl: Duration::from_secs(ttl_secs),
    })
}

fn file(entries: &[(&str, &str, u16)]) -> Arc<EndpointsFile> {
    let mut file = EndpointsFile::default();
    for (service, host, port) in entries {
        file.dns
            .entry(service.to_string())
            .or_default()
            .push(DnsTarget {
                host: host.to_string(),
                port: *port,
                weight: 1,
                zone: String::new(),
                service_port: None,
            });
    }
    Arc::new(file)
}

/// Lets the source's tasks run; with paused time, sleeping also moves the clock.
async fn after(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn re_resolves_on_the_bounded_ttl_and_keeps_the_last_good_addresses() {
    let script = Script::new(&[(
        "api.example.com",
        vec![
            ok(&["192.0.2.1"], 1),
            Err("SERVFAIL".into()),
            Err("SERVFAIL".into()),
            ok(&["192.0.2.2", "192.0.2.3"], 86_400),
        ],
    )]);
    let (tx, rx) = watch::channel(file(&[("pay.external", "api.example.com", 443)]));
    let hub = Hub::new();
    let (_closing_tx, closing) = watch::channel(false);
    crate::sources::spawn(
        Box::new(DnsSource::new(rx, script.clone())),
        hub.clone(),
        closing,
    );

    after(1).await;
    assert_eq!(endpoints(&hub, "pay.external").unwrap(), ["192.0.2.1:443"]);
    // A TTL of 1 s is raised to 5 s; two failures keep 192.0.2.1, retried after 5 s then 10 s.
    after(15).await;
    assert_eq!(script.calls("api.example.com"), [0, 5, 10]);
    assert_eq!(endpoints(&hub, "pay.external").unwrap(), ["192.0.2.1:443"]);
    after(5).await;
    assert_eq!(
        endpoints(&hub, "pay.external").unwrap(),
        ["192.0.2.2:443", "192.0.2.3:443"]
    );
    // A day-long TTL is lowered to 5 minutes.
    after(300).await;
    assert_eq!(script.calls("api.example.com"), [0, 5, 10, 20, 320]);

    // A service removed from the file loses its endpoints and its name is no longer resolved.
    tx.send_replace(file(&[]));
    after(1).await;
    assert_eq!(endpoints(&hub, "pay.external"), None);
    after(600).await;
    assert_eq!(script.calls("api.example.com").len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_service_merges_its_names_and_new_entries_start_resolving() {
    let script = Script::new(&[
        ("a.example", vec![ok(&["192.0.2.1"], 60)]),
        ("b.example", vec![ok(&["192.0.2.2"], 60)]),
        ("c.example", vec![Err("NXDOMAIN".into())]),
    ]);
    let (tx, rx) = watch::channel(file(&[("pay.external", "a.example", 443)]));
    let hub = Hub::new();
    let (_closing_tx, closing) = watch::channel(false);
    crate::sources::spawn(
        Box::new(DnsSource::new(rx, script.clone())),
        hub.clone(),
        closing,
    );
    after(1).await;
    assert_eq!(endpoints(&hub, "pay.external").unwrap(), ["192.0.2.1:443"]);

    tx.send_replace(file(&[
        ("pay.external", "a.example", 443),
        ("pay.external", "b.example", 8443),
        ("mail.external", "c.example", 25),
    ]));
    after(1).await;
    assert_eq!(
        endpoints(&hub, "pay.external").unwrap(),
        ["192.0.2.1:443", "192.0.2.2:8443"]
    );
    // A name that never resolved gives its service no endpoints (rather than an empty list).
    assert_eq!(endpoints(&hub, "mail.external"), None);
    // a.example was not resolved again for the new file: its task kept running.
    assert_eq!(script.calls("a.example"), [0]);
}
