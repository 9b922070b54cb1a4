//! WebSocket through the proxy: the HTTP/1.1 upgrade handshake, then frames both ways over the
//! spliced connection.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use shoal_tests::backend::websocket_echo;
use shoal_tests::{HttpBackend, ProxyBuilder, Via};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn websocket_echo_through_both_listeners() {
    let backend = HttpBackend::respond(websocket_echo).await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let tcp = TcpStream::connect(via.entry(&proxy)).await.unwrap();
        let (mut ws, resp) = tokio::time::timeout(
            T,
            tokio_tungstenite::client_async(format!("ws://{host}/chat?room=1"), tcp),
        )
        .await
        .expect("the WebSocket handshake timed out")
        .unwrap_or_else(|e| panic!("{via:?}: WebSocket handshake failed: {e}"));
        assert_eq!(resp.status(), 101, "{via:?}");

        let seen = backend.last();
        assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/chat?room=1");
        assert_eq!(seen.header("upgrade"), Some("websocket"), "{via:?}");
        assert!(
            seen.header_all("connection")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("upgrade")),
            "{via:?}: Connection: upgrade must reach the backend: {:?}",
            seen.headers
        );
        assert!(seen.header("sec-websocket-key").is_some(), "{via:?}");
        assert_eq!(seen.header("host"), Some(host.as_str()), "{via:?}");

        // Messages in both directions, interleaved: each echo before the next send.
        for i in 0..5 {
            let text = format!("message {i} via {via:?}");
            ws.send(Message::text(text.clone())).await.unwrap();
            let echoed = tokio::time::timeout(T, ws.next())
                .await
                .expect("echo timed out")
                .expect("stream ended")
                .unwrap();
            assert_eq!(echoed, Message::text(text), "{via:?}");
        }
        // A burst, then the echoes in order.
        let big = Bytes::from(vec![0xA5u8; 256 * 1024]);
        ws.send(Message::binary(big.clone())).await.unwrap();
        ws.send(Message::binary(Bytes::from_static(b"\x00\x01\x02")))
            .await
            .unwrap();
        ws.send(Message::text("last")).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            let m = tokio::time::timeout(T, ws.next())
                .await
                .expect("echo timed out")
                .expect("stream ended")
                .unwrap();
            if m.is_text() || m.is_binary() {
                got.push(m);
            }
        }
        assert_eq!(got[0], Message::binary(big), "{via:?}: 256 KiB binary");
        assert_eq!(got[1], Message::binary(Bytes::from_static(b"\x00\x01\x02")));
        assert_eq!(got[2], Message::text("last"));

        // Closing handshake: the server's close frame comes back, then the stream ends.
        ws.close(None).await.unwrap();
        let end = tokio::time::timeout(T, async {
            while let Some(m) = ws.next().await {
                if m.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(end.is_ok(), "{via:?}: the WebSocket did not close");
    }
}
