//! `openssl s_client` against the inbound mTLS listener: an independent TLS stack sees TLS 1.3
//! only by default (1.2 too with `SHOAL_TLS_MIN_VERSION=1.2`), never TLS 1.1, the proxy's own
//! leaf certificate, and a chain that verifies against the mesh root.
//!
//! Needs the `openssl` command (`.ci/run` installs it); without it the tests say so and pass.

use std::process::Stdio;
use std::time::Duration;

use shoal_tests::pki::{self, IdentityFiles, Leaf, TestCa};
use shoal_tests::process::TempDir;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};
use tokio::io::AsyncWriteExt;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const REFUSED: &str = "shoal_inbound_tls_refused_total";

/// Fails the test when the `openssl` command is missing (`.ci/run` installs it).
fn require_openssl() {
    shoal_tests::process::require_tool("openssl", "openssl");
}

/// An inbound proxy in `mode` in front of an echo app, and the files an openssl client needs.
struct Setup {
    proxy: Proxy,
    app: HttpBackend,
    web: Leaf,
    client: IdentityFiles,
    _dir: TempDir,
}

async fn setup(mode: &str, min_version: Option<&str>) -> Setup {
    let dir = TempDir::new("mtls-openssl").unwrap();
    let ca = TestCa::new("mesh");
    let web = ca.workload(WEB_ID);
    let client = ca
        .workload(CLIENT_ID)
        .write(dir.path(), "client", &[ca.root_pem()]);
    let app = HttpBackend::echo().await;
    let mut builder = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_INBOUND_TLS_MODE", mode);
    for (k, v) in web.write(dir.path(), "web", &[ca.root_pem()]).env() {
        builder = builder.env(k, v);
    }
    if let Some(v) = min_version {
        builder = builder.env("SHOAL_TLS_MIN_VERSION", v);
    }
    Setup {
        proxy: builder.start().await,
        app,
        web,
        client,
        _dir: dir,
    }
}

/// What one `openssl s_client` run printed.
#[derive(Debug)]
struct Run {
    ok: bool,
    output: String,
}

/// Runs `openssl s_client` with the valid client certificate, the mesh root as CA file and the
/// web identity's SNI, plus `extra`; writes `stdin` then closes it.
async fn s_client(s: &Setup, extra: &[&str], stdin: &str) -> Run {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.arg("s_client")
        .args(["-connect", &s.proxy.inbound().to_string()])
        .args(["-servername", &pki::identity_sni(WEB_ID)])
        .arg("-cert")
        .arg(&s.client.cert)
        .arg("-key")
        .arg(&s.client.key)
        .arg("-CAfile")
        .arg(&s.client.trust_bundle)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run openssl s_client");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("openssl s_client did not finish within 20 s")
        .expect("openssl s_client output");
    Run {
        ok: out.status.success(),
        output: format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A handshake openssl completed with `version`, ALPN h2 and a verified chain.
fn assert_handshake(run: &Run, version: &str, what: &str) {
    assert!(run.ok, "{what}: openssl failed:\n{}", run.output);
    assert!(
        run.output.contains(&format!("Protocol  : {version}"))
            || run.output.contains(&format!("New, {version}, Cipher is")),
        "{what}: not {version}:\n{}",
        run.output
    );
    assert!(
        run.output.contains("ALPN protocol: h2"),
        "{what}: ALPN h2 not negotiated:\n{}",
        run.output
    );
    assert!(
        run.output.contains("Verify return code: 0 (ok)"),
        "{what}: the chain did not verify against the root:\n{}",
        run.output
    );
}

/// A handshake openssl could not complete: it exits with an error and reports no cipher.
fn assert_refused(run: &Run, what: &str) {
    assert!(
        !run.ok && run.output.contains("Cipher is (NONE)"),
        "{what}: openssl completed a handshake:\n{}",
        run.output
    );
}

#[tokio::test]
async fn default_is_tls13_only_and_the_chain_verifies() {
    require_openssl();
    let s = setup("strict", None).await;

    let run = s_client(&s, &["-alpn", "h2", "-tls1_3", "-showcerts"], "").await;
    assert_handshake(&run, "TLSv1.3", "-tls1_3");
    // The leaf is the proxy's own certificate, byte for byte, and says whose it is.
    let first_pem = run
        .output
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .expect("-showcerts printed a certificate");
    let strip = |s: &str| s.split_whitespace().collect::<String>();
    let leaf_body = s
        .web
        .cert_pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap();
    assert_eq!(
        strip(first_pem),
        strip(leaf_body),
        "the presented leaf is not the proxy's"
    );
    assert!(
        run.output.contains(&format!("CN = {WEB_ID}"))
            || run.output.contains(&format!("CN={WEB_ID}")),
        "the leaf's subject does not name {WEB_ID}:\n{}",
        run.output
    );

    // A real request over the openssl connection (HTTP/1.1 inside mesh TLS) reaches the app
    // with the client's identity: the proxy accepted openssl's certificate.
    let run = s_client(
        &s,
        &["-alpn", "http/1.1", "-tls1_3", "-ign_eof"],
        "GET /openssl HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        run.output.contains("HTTP/1.1 200"),
        "no 200:\n{}",
        run.output
    );
    let seen = s.app.last();
    assert_eq!(seen.uri.path(), "/openssl");
    assert_eq!(seen.header("shoal-client-id"), Some(CLIENT_ID));

    // TLS 1.2 is refused by default, and counted.
    let before = s.proxy.metric(REFUSED, &[("reason", "handshake")]).await;
    let run = s_client(&s, &["-alpn", "h2", "-tls1_2"], "").await;
    assert_refused(&run, "-tls1_2 against the default (1.3)");
    assert!(
        run.output.contains("protocol version"),
        "-tls1_2: not refused for its version:\n{}",
        run.output
    );
    s.proxy
        .wait_metric(REFUSED, &[("reason", "handshake")], before + 1.0)
        .await;
    assert_eq!(
        s.app.count(),
        1,
        "only the one request above reached the app"
    );
}

#[tokio::test]
async fn min_version_12_accepts_tls12_and_tls13() {
    require_openssl();
    let s = setup("strict", Some("1.2")).await;
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let run = s_client(&s, &["-alpn", "h2", flag], "").await;
        assert_handshake(&run, version, flag);
    }
    // A TLS 1.2 handshake with a client certificate proves the proxy accepted it (1.2 checks
    // the client certificate inside the handshake); and a request goes through.
    let run = s_client(
        &s,
        &["-alpn", "http/1.1", "-tls1_2", "-ign_eof"],
        "GET /tls12 HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        run.output.contains("HTTP/1.1 200"),
        "no 200:\n{}",
        run.output
    );
    assert_eq!(s.app.last().header("shoal-client-id"), Some(CLIENT_ID));
    assert_eq!(s.proxy.metric(REFUSED, &[]).await, 0.0);
}

/// The `N` of s_client's "SSL handshake has read M bytes and written N bytes".
fn bytes_written(output: &str) -> usize {
    output
        .split("and written ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Offers only `flag` (`-tls1_1`, `-tls1`), with `SECLEVEL=0` so openssl really sends it.
async fn old_tls(s: &Setup, flag: &str) -> Run {
    s_client(
        s,
        &["-alpn", "h2", flag, "-cipher", "DEFAULT@SECLEVEL=0"],
        "",
    )
    .await
}

#[tokio::test]
async fn tls11_and_lower_never_complete_a_handshake() {
    require_openssl();
    for min in [Some("1.2"), None] {
        let s = setup("strict", min).await;
        for flag in ["-tls1_1", "-tls1"] {
            let before = s.proxy.metric(REFUSED, &[]).await;
            let run = old_tls(&s, flag).await;
            assert_refused(&run, &format!("{flag} (min {min:?})"));
            // openssl really offered the old version (it did not give up before sending).
            assert!(
                bytes_written(&run.output) > 0,
                "{flag}: openssl sent no ClientHello:\n{}",
                run.output
            );
            s.proxy.wait_metric(REFUSED, &[], before + 1.0).await;
            assert_eq!(
                s.app.connections(),
                0,
                "{flag} (min {min:?}): reached the app"
            );
        }
    }
}

#[tokio::test]
async fn tls11_with_the_mesh_sni_is_refused_for_its_version_and_never_reaches_the_app() {
    require_openssl();
    let s = setup("permissive", Some("1.2")).await;
    for flag in ["-tls1_1", "-tls1"] {
        let run = old_tls(&s, flag).await;
        assert_refused(&run, flag);
        assert_eq!(
            s.app.connections(),
            0,
            "{flag}: a TLS 1.x ClientHello for the mesh reached the app"
        );
        // rustls answers a hello it will not serve with a fatal alert (handshake_failure for a
        // client that offers nothing above TLS 1.1) instead of a silent close.
        assert!(
            run.output.contains("SSL alert number"),
            "{flag}: no TLS alert:\n{}",
            run.output
        );
    }
}
