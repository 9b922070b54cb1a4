//! HTTP/2 (h2c prior knowledge) and gRPC through the proxy: trailers, `:authority`, concurrent
//! streams, every gRPC call shape, error statuses, deadlines and cancellation.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response, Version};
use shoal_tests::backend::text_response;
use shoal_tests::client::{self, H2Client, request};
use shoal_tests::grpc::{self, GrpcBackend, msg, parse_grpc_timeout, pb};
use shoal_tests::{HttpBackend, ProxyBuilder, Via, assert_eventually};
use tonic::Code;

const T: Duration = Duration::from_secs(5);

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut t = HeaderMap::new();
    for (k, v) in pairs {
        t.append(*k, v.parse().unwrap());
    }
    t
}

#[tokio::test]
async fn h2c_preserves_authority_and_trailers_both_ways() {
    let backend = HttpBackend::respond(|r| {
        Response::builder()
            .header("x-seen-authority", r.authority().unwrap_or_default())
            .body(client::chunks(
                vec![Bytes::from_static(b"h2 "), Bytes::from_static(b"body")],
                Some(trailers(&[("x-trailer", "t1"), ("grpc-status", "0")])),
            ))
            .unwrap()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let authority = match via {
            Via::Inbound => "svc.example:8080".to_string(),
            Via::Outbound => backend.addr().to_string(),
        };
        let c = H2Client::connect(via.entry(&proxy)).await.unwrap();
        let resp = c
            .send(
                request("POST", &format!("http://{authority}/p?q=1"), None)
                    .version(Version::HTTP_2)
                    .header("te", "trailers")
                    .body(client::chunks(
                        vec![Bytes::from_static(b"req")],
                        Some(trailers(&[("x-req-trailer", "r1")])),
                    ))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        assert_eq!(resp.version, Version::HTTP_2);
        assert_eq!(resp.text(), "h2 body", "{via:?}");
        let got = resp.trailers.clone().unwrap_or_default();
        assert_eq!(
            got.get("x-trailer").map(|v| v.as_bytes()),
            Some(&b"t1"[..]),
            "{via:?}: {got:?}"
        );
        assert_eq!(
            got.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{via:?}"
        );

        let seen = backend.last();
        assert_eq!(
            seen.version,
            Version::HTTP_2,
            "{via:?}: h2 in, h2 out (protocol auto)"
        );
        assert_eq!(
            seen.authority().as_deref(),
            Some(authority.as_str()),
            "{via:?}"
        );
        assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/p?q=1");
        assert_eq!(seen.body, "req");
        let req_trailers = seen.trailers.clone().unwrap_or_default();
        assert_eq!(
            req_trailers.get("x-req-trailer").map(|v| v.as_bytes()),
            Some(&b"r1"[..]),
            "{via:?}: request trailers: {req_trailers:?}"
        );
    }
}

#[tokio::test]
async fn h2c_many_concurrent_streams_on_one_connection() {
    let backend = HttpBackend::start(|r| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text_response(200, &format!("answer to {}", r.uri.path()))
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .start()
        .await;
    let c = H2Client::connect(proxy.inbound()).await.unwrap();
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64 {
        let c = c.clone();
        calls.spawn(async move {
            let path = format!("/stream/{i}");
            let resp = c
                .send(
                    request("GET", &format!("http://app.example{path}"), None)
                        .body(client::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.text(), format!("answer to {path}"));
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(backend.count(), 64);
    // 64 × 200 ms one after another would take 12.8 s.
    assert!(
        elapsed < Duration::from_secs(4),
        "64 concurrent streams took {elapsed:?}: they were not concurrent"
    );
    assert!(
        backend.connections() <= 2,
        "the proxy opened {} upstream connections for one h2 client connection",
        backend.connections()
    );
}

#[tokio::test]
async fn grpc_unary_through_inbound_and_outbound() {
    let backend = GrpcBackend::start().await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    let mut inbound = grpc::client(proxy.inbound()).await;
    let mut outbound =
        grpc::client_with_origin(proxy.outbound(), &format!("http://{}", backend.addr())).await;
    for (via, c) in [("inbound", &mut inbound), ("outbound", &mut outbound)] {
        let resp = c.unary(msg(&format!("hello {via}"))).await.unwrap();
        assert_eq!(
            resp.metadata()
                .get("x-served-by")
                .and_then(|v| v.to_str().ok()),
            Some("echo"),
            "{via}: response metadata"
        );
        assert_eq!(resp.into_inner().message, format!("hello {via}"));
    }
    let calls = backend.calls_of("Unary");
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(
            call.metadata.get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert_eq!(
            call.metadata.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
    }
}

#[tokio::test]
async fn grpc_server_client_and_bidi_streaming() {
    let backend = GrpcBackend::start().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .start()
        .await;
    let mut c = grpc::client(proxy.inbound()).await;

    // Server streaming.
    let mut stream = c
        .server_stream(pb::EchoRequest {
            message: "m".into(),
            count: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push((m.index, m.message));
    }
    let want: Vec<(u32, String)> = (0..5).map(|i| (i, format!("m-{i}"))).collect();
    assert_eq!(got, want);

    // Client streaming.
    let (tx, requests) = grpc::request_stream();
    let call = tokio::spawn({
        let mut c = c.clone();
        async move { c.client_stream(requests).await }
    });
    for m in ["a", "b", "c", "d"] {
        tx.send(msg(m)).await.unwrap();
    }
    drop(tx);
    let resp = call.await.unwrap().unwrap().into_inner();
    assert_eq!((resp.message.as_str(), resp.index), ("a,b,c,d", 4));

    // Bidi, in lock step: each answer arrives before the next request is sent, so the proxy
    // streams rather than buffering either direction.
    let (tx, requests) = grpc::request_stream();
    let mut responses = c.bidi(requests).await.unwrap().into_inner();
    for i in 0..5u32 {
        tx.send(msg(&format!("ping {i}"))).await.unwrap();
        let m = tokio::time::timeout(T, responses.message())
            .await
            .expect("a bidi answer before the next request")
            .unwrap()
            .expect("the stream ended early");
        assert_eq!((m.index, m.message), (i, format!("ping {i}")));
    }
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
}

#[tokio::test]
async fn grpc_error_status_and_message_are_preserved() {
    let backend = GrpcBackend::start().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .start()
        .await;
    let mut c = grpc::client(proxy.inbound()).await;
    let message = "no such thing: ünïcode, 100% sure\tand tab";
    for (code, name) in [
        (Code::NotFound, "NOT_FOUND"),
        (Code::PermissionDenied, "PERMISSION_DENIED"),
        (Code::Unavailable, "UNAVAILABLE"),
        (Code::Internal, "INTERNAL"),
    ] {
        let err = c
            .unary(pb::EchoRequest {
                fail_code: code as i32,
                fail_message: message.into(),
                ..Default::default()
            })
            .await
            .expect_err("the call must fail");
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert_eq!(
            err.message(),
            message,
            "{name}: grpc-message (percent-encoded on the wire)"
        );
    }
}

#[tokio::test]
async fn grpc_deadline_exceeded_and_grpc_timeout_reaches_the_server() {
    let backend = GrpcBackend::start().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .start()
        .await;
    // tonic's own channel ends a call at its deadline locally with CANCELLED ("Timeout expired");
    // this client has no local timer, so the status comes from the server through the proxy,
    // as with gRPC clients whose deadline is enforced by the server.
    let mut c = grpc::client_without_local_deadline(proxy.inbound()).await;
    let mut req = tonic::Request::new(pb::EchoRequest {
        message: "slow".into(),
        delay_ms: 5_000,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = c.slow(req).await.expect_err("the deadline must pass first");
    let elapsed = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "DEADLINE_EXCEEDED took {elapsed:?} (the method takes 5 s)"
    );
    let calls = backend.calls_of("Slow");
    assert_eq!(calls.len(), 1);
    let timeout = calls[0]
        .metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .expect("grpc-timeout reached the server");
    assert_eq!(
        parse_grpc_timeout(timeout),
        Some(Duration::from_millis(300)),
        "{timeout}"
    );

    // The same through tonic's standard channel: the client gives up at its deadline.
    let mut c = grpc::client(proxy.inbound()).await;
    let mut req = tonic::Request::new(pb::EchoRequest {
        delay_ms: 5_000,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = c.slow(req).await.expect_err("the deadline must pass first");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn grpc_client_cancellation_reaches_the_server() {
    let backend = GrpcBackend::start().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .start()
        .await;
    let c = grpc::client(proxy.inbound()).await;

    // A unary call the server never answers: drop it once the server has it.
    let call = tokio::spawn({
        let mut c = c.clone();
        async move { c.hang(msg("wait")).await }
    });
    assert_eventually!(
        T,
        !backend.calls_of("Hang").is_empty(),
        "the Hang call at the server"
    );
    assert!(backend.recorder().cancelled().is_empty());
    call.abort();
    assert_eventually!(
        T,
        backend.recorder().cancelled().contains(&"Hang"),
        "the server's Hang handler to be dropped after the client cancelled"
    );

    // A server stream: read the first message, then drop the stream.
    let mut stream = c
        .clone()
        .hang_stream(msg("first"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.message, "first");
    assert!(!backend.recorder().cancelled().contains(&"HangStream"));
    drop(stream);
    assert_eventually!(
        T,
        backend.recorder().cancelled().contains(&"HangStream"),
        "the server's HangStream stream to be dropped after the client cancelled"
    );
}
