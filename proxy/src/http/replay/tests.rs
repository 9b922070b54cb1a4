use std::collections::VecDeque;

use http_body_util::BodyExt;

use super::*;

/// A body of given frames, ending after the last.
struct Frames(VecDeque<Result<Frame<Bytes>, BodyError>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn frames(chunks: &[&'static [u8]], trailers: Option<HeaderMap>) -> Frames {
    let mut f: VecDeque<_> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c))))
        .collect();
    if let Some(t) = trailers {
        f.push_back(Ok(Frame::trailers(t)));
    }
    Frames(f)
}

async fn read_all<B>(body: B) -> (Vec<u8>, Option<HeaderMap>)
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn every_attempt_sees_the_whole_body_and_trailers() {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    let replay = Replay::new(frames(&[b"hello ", b"world"], Some(t.clone())));
    for attempt in 0..3 {
        let (data, trailers) = read_all(replay.attempt().unwrap()).await;
        assert_eq!(data, b"hello world", "attempt {attempt}");
        assert_eq!(trailers.as_ref(), Some(&t), "attempt {attempt}");
    }
}

#[tokio::test]
async fn an_attempt_cut_short_leaves_the_rest_for_the_next() {
    let replay = Replay::new(frames(&[b"a", b"b", b"c"], None));
    let mut first = replay.attempt().unwrap();
    let one = first.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(one, "a");
    drop(first);
    let (data, _) = read_all(replay.attempt().unwrap()).await;
    assert_eq!(data, b"abc");
}

#[tokio::test]
async fn a_body_over_the_limit_streams_once_and_is_not_replayable() {
    static BIG: [u8; MAX_REPLAY_BYTES] = [7; MAX_REPLAY_BYTES];
    let replay = Replay::new(frames(&[b"x", &BIG], None));
    assert!(replay.replayable());
    let (data, _) = read_all(replay.attempt().unwrap()).await;
    assert_eq!(
        data.len(),
        MAX_REPLAY_BYTES + 1,
        "the first attempt gets it all"
    );
    assert!(!replay.replayable());
    assert!(replay.attempt().is_none());
}

#[tokio::test]
async fn a_failed_original_is_not_replayable() {
    let replay = Replay::new(Frames(VecDeque::from([
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Err("client went away".into()),
    ])));
    let err = replay.attempt().unwrap().collect().await.err();
    assert!(err.is_some());
    assert!(replay.attempt().is_none());
}

#[tokio::test]
async fn an_empty_body_is_empty_for_every_attempt() {
    let replay = Replay::new(frames(&[], None));
    let body = replay.attempt().unwrap();
    assert!(body.is_end_stream());
    assert_eq!(read_all(body).await.0, b"");
    assert!(replay.attempt().unwrap().is_end_stream());
}
