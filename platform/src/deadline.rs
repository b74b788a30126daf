//! Deadlines: `grpc-timeout` read and written the same way everywhere, and
//! enforced on a whole call, server streams included.
//!
//! tonic bounds a handler's future by the client's `grpc-timeout`, but not
//! the body of a response that has started: a server stream with a 2 s
//! deadline went on for as long as the handler kept it open. [`Deadline`]
//! ends such a body when the deadline passes, with DEADLINE_EXCEEDED in its
//! trailers, as the gRPC protocol says a deadline covers the whole call.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use futures::task::AtomicWaker;
use http_body::{Body, Frame};

/// Parses a `grpc-timeout` header value (`100m`, `5S`, ...).
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a deadline as `grpc-timeout` (milliseconds; at most 8 digits).
pub fn format_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis().clamp(1, 99_999_999);
    format!("{millis}m")
}

/// The deadline a request asks for in its `grpc-timeout` header.
pub fn requested(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout)
}

/// The trailers that end a call whose deadline passed.
pub fn exceeded_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("deadline exceeded"),
    );
    trailers
}

/// The trailers that end a server stream because the server is stopping:
/// UNAVAILABLE, which clients retry on another replica.
pub fn draining_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("the server is shutting down; reconnect"),
    );
    trailers
}

/// The trailers that end a server stream whose caller's access token has
/// expired: UNAUTHENTICATED; the client reconnects with a fresh token and
/// resumes.
pub fn token_expired_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("access token expired; reconnect with a fresh token"),
    );
    trailers
}

/// The trailers that end a server stream whose caller's access token was
/// revoked: UNAUTHENTICATED; the client refreshes its token (after a role
/// change) or, its session ended, signs in again.
pub fn token_revoked_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static(
            "access token has been revoked; refresh it or sign in again",
        ),
    );
    trailers
}

/// A response body that ends with DEADLINE_EXCEEDED trailers when its
/// deadline passes first, with UNAVAILABLE when its server starts draining
/// streams, or with UNAUTHENTICATED when the token it was opened with
/// expires or is revoked (and passes through untouched otherwise).
///
/// The guards (timer, drain, expiry, revocation) are polled only when one
/// of them woke the body ([`GuardWake`]), not at every frame: polling four
/// futures per message was about 5% of notify-svc's CPU at 10,000 streams.
pub struct Deadline<B> {
    inner: B,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    drain: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    revoked: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Set when a guard may be ready; wakes the body's task.
    guard_wake: Arc<GuardWake>,
    /// Trailers were sent (the inner body's or ours): nothing follows.
    finished: bool,
}

/// The waker a [`Deadline`]'s guards are polled with: it marks that a
/// guard woke, then wakes the task polling the body.
struct GuardWake {
    /// Starts set, so the first poll polls (and so registers) every guard.
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for GuardWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Option<Duration>) -> Self {
        Deadline {
            inner,
            timer: deadline.map(|d| Box::pin(tokio::time::sleep(d))),
            drain: None,
            expiry: None,
            revoked: None,
            guard_wake: Arc::new(GuardWake {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
            finished: false,
        }
    }

    /// Also ends the body (UNAUTHENTICATED) once `left` has passed: the
    /// time its caller's access token has left, leeway included.
    pub fn expiring_after(mut self, left: Duration) -> Self {
        self.expiry = Some(Box::pin(tokio::time::sleep(left)));
        self
    }

    /// Also ends the body (UNAUTHENTICATED) once `revoked` resolves: when
    /// its caller's access token is revoked.
    pub fn ending_when_revoked(
        mut self,
        revoked: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.revoked = Some(Box::pin(revoked));
        self
    }

    /// Also ends the body (UNAVAILABLE) when `drain` is cancelled.
    pub fn draining_on(mut self, drain: &crate::shutdown::ShutdownToken) -> Self {
        self.drain = Some(Box::pin(drain.clone().cancelled_owned()));
        self
    }
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        // Before the flag is read: a guard that wakes from now on wakes
        // this task.
        this.guard_wake.task.register(cx.waker());
        if this.guard_wake.woken.swap(false, Ordering::AcqRel)
            && let Some(trailers) = this.poll_guards()
        {
            this.finished = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => this.finished = true,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finished = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }
}

impl<B> Deadline<B> {
    /// Polls the guards with [`GuardWake`]'s waker: the trailers of the
    /// first one that is ready.
    fn poll_guards(&mut self) -> Option<http::HeaderMap> {
        // Only when a guard woke, so the waker's Arc clone is rare.
        let waker = Waker::from(self.guard_wake.clone());
        let cx = &mut Context::from_waker(&waker);
        if fired(&mut self.timer, cx) {
            Some(exceeded_trailers())
        } else if fired(&mut self.drain, cx) {
            Some(draining_trailers())
        } else if fired(&mut self.expiry, cx) {
            Some(token_expired_trailers())
        } else if fired(&mut self.revoked, cx) {
            Some(token_revoked_trailers())
        } else {
            None
        }
    }
}

/// Whether `guard` is set and ready.
fn fired<F: Future + ?Sized>(guard: &mut Option<Pin<Box<F>>>, cx: &mut Context<'_>) -> bool {
    guard
        .as_mut()
        .is_some_and(|guard| guard.as_mut().poll(cx).is_ready())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("m"), None);
        assert_eq!(parse_timeout("123456789m"), None);
        assert_eq!(parse_timeout("10x"), None);
        assert_eq!(format_timeout(Duration::from_secs(3)), "3000m");
    }

    #[tokio::test]
    async fn a_stream_whose_token_is_revoked_ends_with_unauthenticated() {
        use http_body_util::{BodyExt, StreamBody};
        let never = StreamBody::new(futures::stream::pending::<
            Result<Frame<bytes::Bytes>, std::convert::Infallible>,
        >());
        let (revoke, revoked) = tokio::sync::oneshot::channel::<()>();
        let mut body = Deadline::new(never, None).ending_when_revoked(async move {
            let _ = revoked.await;
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = revoke.send(());
        });
        let frame = body.frame().await.unwrap().unwrap();
        let trailers = frame.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "16");
        assert!(body.frame().await.is_none());
    }

    /// The guards are polled only when one of them woke the body, yet a
    /// body that always has a frame ready still ends at its deadline (at
    /// the frame after the timer fired).
    #[tokio::test]
    async fn a_busy_stream_past_its_deadline_ends_with_deadline_exceeded() {
        use http_body_util::{BodyExt, StreamBody};
        let busy = StreamBody::new(futures::stream::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"x")))
        }));
        let mut body = Deadline::new(busy, Some(Duration::from_millis(20)));
        let started = tokio::time::Instant::now();
        let mut data_frames = 0u64;
        let trailers = loop {
            let frame = body.frame().await.unwrap().unwrap();
            match frame.into_trailers() {
                Ok(trailers) => break trailers,
                Err(_) => data_frames += 1,
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never ended");
            // Lets the runtime's timer run, as hyper's task does between
            // writes.
            tokio::task::yield_now().await;
        };
        assert_eq!(trailers["grpc-status"], "4");
        assert!(data_frames > 0);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
        use http_body_util::{BodyExt, StreamBody};
        // A body that never ends on its own.
        let never = StreamBody::new(futures::stream::pending::<
            Result<Frame<bytes::Bytes>, std::convert::Infallible>,
        >());
        let mut body = Deadline::new(never, Some(Duration::from_millis(20)));
        let frame = body.frame().await.unwrap().unwrap();
        let trailers = frame.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.frame().await.is_none());
    }
}
