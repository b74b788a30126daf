//! gRPC message framing (a 1-byte flag and a 4-byte big-endian length before
//! each message), counted as bytes arrive in pieces of any size.
//!
//! A unary or server-streaming method takes exactly one request message;
//! gRPC says a second is an error, while tonic reads the first and ignores
//! the rest. [`OneRequest`] (in `GrpcHost`) and the gateway count messages
//! with [`MessageCounter`] and refuse the call with INVALID_ARGUMENT.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};

/// Counts the messages that begin in a gRPC body fed to it piece by piece.
#[derive(Debug, Default, Clone)]
pub struct MessageCounter {
    /// Bytes of the current message header seen so far (0 to 4).
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message body still to come.
    remaining: u64,
    messages: u64,
}

impl MessageCounter {
    /// Feeds the next bytes; returns how many messages have begun so far.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len() as u64);
                self.remaining -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            if self.header_len == 0 {
                self.messages += 1;
            }
            let take = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 5 {
                let length = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                self.remaining = u64::from(u32::from_be_bytes(length));
                self.header_len = 0;
            }
        }
        self.messages
    }
}

/// What the client is told when a second request message begins.
pub fn second_message_error(path: &str) -> String {
    format!("{path} takes exactly one request message; the request carries more")
}

/// A request body of a method that takes one message: a second message
/// ends it with INVALID_ARGUMENT (a `tonic::Status` as the body error, which
/// tonic answers with as it is).
pub struct OneRequest<B> {
    inner: B,
    counter: MessageCounter,
    path: String,
}

impl<B> OneRequest<B> {
    pub fn new(inner: B, path: &str) -> Self {
        OneRequest {
            inner,
            counter: MessageCounter::default(),
            path: path.to_owned(),
        }
    }
}

impl<B> Body for OneRequest<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && this.counter.feed(data) > 1
                {
                    let status = tonic::Status::invalid_argument(second_message_error(&this.path));
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(len as u32).to_be_bytes());
        framed.extend(std::iter::repeat_n(7u8, len));
        framed
    }

    #[test]
    fn counts_messages_split_anywhere() {
        let mut body = message(3);
        body.extend(message(0));
        body.extend(message(300));
        for split in 0..body.len() {
            let mut counter = MessageCounter::default();
            counter.feed(&body[..split]);
            assert_eq!(counter.feed(&body[split..]), 3, "split at {split}");
        }
        let mut bytewise = MessageCounter::default();
        let counts: Vec<u64> = body.iter().map(|b| bytewise.feed(&[*b])).collect();
        assert_eq!(counts[0], 1);
        assert_eq!(
            counts[8], 2,
            "the empty message begins right after the first"
        );
        assert_eq!(*counts.last().unwrap(), 3);
        assert_eq!(MessageCounter::default().feed(&[]), 0);
    }
}
