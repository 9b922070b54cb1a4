use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::GatedTcp;

/// A task waker that counts its wake-ups.
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Waker, Arc<Counting>) {
    let c = Arc::new(Counting(AtomicUsize::new(0)));
    (Waker::from(c.clone()), c)
}

fn read(s: &mut GatedTcp, task: &Waker, buf: &mut [u8]) -> Poll<usize> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(s).poll_read(&mut Context::from_waker(task), &mut rb) {
        Poll::Ready(r) => {
            r.expect("read failed");
            Poll::Ready(rb.filled().len())
        }
        Poll::Pending => Poll::Pending,
    }
}

async fn pair() -> (TcpStream, GatedTcp) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, GatedTcp::new(server))
}

/// Lets the runtime's I/O driver run until `done` holds (5 s at most).
async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn data_arriving_after_parked_reads_wakes_the_task_and_is_read() {
    let (mut client, mut gated) = pair().await;
    let (task, count) = counting();
    let mut buf = [0u8; 16];
    // The first read sets the gate up, the second hands tokio the gate's waker, the third is
    // answered by the gate alone.
    for _ in 0..3 {
        assert!(read(&mut gated, &task, &mut buf).is_pending());
    }
    client.write_all(b"hello").await.unwrap();
    until("the wake-up", || count.0.load(Ordering::SeqCst) > 0).await;
    assert_eq!(read(&mut gated, &task, &mut buf), Poll::Ready(5));
    assert_eq!(&buf[..5], b"hello");
    // Nothing more: parked again, and woken again by the next bytes.
    assert!(read(&mut gated, &task, &mut buf).is_pending());
    assert!(read(&mut gated, &task, &mut buf).is_pending());
    let before = count.0.load(Ordering::SeqCst);
    client.write_all(b"again").await.unwrap();
    until("the second wake-up", || {
        count.0.load(Ordering::SeqCst) > before
    })
    .await;
    assert_eq!(read(&mut gated, &task, &mut buf), Poll::Ready(5));
    assert_eq!(&buf[..5], b"again");
}

#[tokio::test]
async fn a_stream_moved_to_another_task_wakes_that_task() {
    let (mut client, mut gated) = pair().await;
    let (first, first_count) = counting();
    let (second, second_count) = counting();
    let mut buf = [0u8; 16];
    assert!(read(&mut gated, &first, &mut buf).is_pending());
    assert!(read(&mut gated, &first, &mut buf).is_pending());
    // Another task polls the parked stream (e.g. a connection handed to a splice task).
    assert!(read(&mut gated, &second, &mut buf).is_pending());
    client.write_all(b"x").await.unwrap();
    until("the second task's wake-up", || {
        second_count.0.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(first_count.0.load(Ordering::SeqCst), 0);
    assert_eq!(read(&mut gated, &second, &mut buf), Poll::Ready(1));
}

#[tokio::test]
async fn the_peer_closing_wakes_a_parked_read_with_end_of_stream() {
    let (client, mut gated) = pair().await;
    let (task, count) = counting();
    let mut buf = [0u8; 16];
    assert!(read(&mut gated, &task, &mut buf).is_pending());
    assert!(read(&mut gated, &task, &mut buf).is_pending());
    drop(client);
    until("the wake-up", || count.0.load(Ordering::SeqCst) > 0).await;
    assert_eq!(read(&mut gated, &task, &mut buf), Poll::Ready(0));
}

/// What a gated poll reaches: counts the polls and keeps the waker each was given.
fn probe<'a>(
    polls: &'a std::cell::Cell<u32>,
    given: &'a std::cell::RefCell<Option<Waker>>,
) -> impl FnOnce(&mut Context<'_>) -> Poll<()> + 'a {
    move |cx| {
        polls.set(polls.get() + 1);
        *given.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn repeated_polls_reach_the_thing_only_after_its_waker_was_called() {
    let mut gate = super::WakeGate::default();
    let (task, count) = counting();
    let mut cx = Context::from_waker(&task);
    let polls = std::cell::Cell::new(0);
    let given = std::cell::RefCell::new(None);
    // The first poll goes through (and sets the gate up), the second hands over the gate's waker.
    assert!(gate.poll(&mut cx, probe(&polls, &given)).is_pending());
    assert!(gate.poll(&mut cx, probe(&polls, &given)).is_pending());
    assert_eq!(polls.get(), 2);
    // Nothing woke it: answered by the gate, the thing is not polled.
    assert!(gate.poll(&mut cx, probe(&polls, &given)).is_pending());
    assert!(gate.poll(&mut cx, probe(&polls, &given)).is_pending());
    assert_eq!(polls.get(), 2);
    // The thing calls the waker it holds: the task is woken, and the next poll reaches the thing.
    given.borrow_mut().take().expect("a waker").wake();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert!(gate.poll(&mut cx, probe(&polls, &given)).is_pending());
    assert_eq!(polls.get(), 3);
    // Polled by another task: reaches the thing at once.
    let (other, _) = counting();
    assert!(
        gate.poll(&mut Context::from_waker(&other), probe(&polls, &given))
            .is_pending()
    );
    assert_eq!(polls.get(), 4);
}
