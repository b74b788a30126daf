//! Writes that wait their turn, so one system call carries many frames.
//!
//! An HTTP/2 connection is a task of its own: a response stream that sends
//! a message wakes it, and it writes what its streams have buffered. When a
//! notification wakes thousands of streams at once, tokio runs each
//! stream's task and then, at once, the connection task it woke (the
//! multi-threaded scheduler's "LIFO slot" runs a task woken by the running
//! one next). The connection then wrote one frame per system call: notify's
//! 10,000-stream fan-out made 0.8 `sendto` per delivery, a third of its CPU.
//!
//! [`WriteTurn`] makes a connection's first write after a flush wait one
//! turn: the task wakes itself and returns `Pending`, and tokio runs it
//! again after the tasks already queued (a task woken while it runs goes to
//! the back of the queue, not the LIFO slot). By then the other streams
//! have added their frames, and the buffer leaves in one write. A
//! connection with nothing else to wait for is polled again at once, so a
//! lone call pays one extra poll of its connection, not a delay.

use std::task::{Context, Poll};

/// Whether a connection's next write has waited its turn since the last
/// flush. One per connection, beside its socket.
#[derive(Debug, Default)]
pub struct WriteTurn {
    waited: bool,
}

impl WriteTurn {
    /// Before a write: `Pending` the first time after a flush (the task is
    /// woken at once), `Ready` from then on until the next flush.
    pub fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waited {
            return Poll::Ready(());
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// After a flush: the next write waits its turn again.
    pub fn flushed(&mut self) {
        self.waited = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };
    use tokio::io::{AsyncWrite, AsyncWriteExt};

    /// Counts the writes that reach it, like a socket counts system calls.
    struct CountingSocket {
        writes: Arc<AtomicUsize>,
        bytes: Vec<u8>,
        turn: WriteTurn,
    }

    impl AsyncWrite for CountingSocket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            std::task::ready!(self.turn.poll_turn(cx));
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.turn.flushed();
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_write_waits_one_turn_after_each_flush_and_loses_nothing() {
        let writes = Arc::new(AtomicUsize::new(0));
        let mut socket = CountingSocket {
            writes: writes.clone(),
            bytes: Vec::new(),
            turn: WriteTurn::default(),
        };
        socket.write_all(b"one ").await.unwrap();
        socket.write_all(b"two ").await.unwrap();
        socket.flush().await.unwrap();
        socket.write_all(b"three").await.unwrap();
        socket.flush().await.unwrap();
        assert_eq!(socket.bytes, b"one two three");
        assert_eq!(writes.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn the_turn_lets_tasks_already_queued_run_first() {
        // The writer, running, wakes another task (as a stream's message
        // wakes its connection): that task runs before the write ends.
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = {
            let order = order.clone();
            tokio::spawn(async move {
                let queued = {
                    let order = order.clone();
                    tokio::spawn(async move { order.lock().unwrap().push("queued task") })
                };
                let mut turn = WriteTurn::default();
                std::future::poll_fn(|cx| turn.poll_turn(cx)).await;
                order.lock().unwrap().push("write");
                queued.await.unwrap();
            })
        };
        writer.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["queued task", "write"]);
    }
}
