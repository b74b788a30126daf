//! The gateway's own connections to its upstreams, made so that the
//! gateway can end them when it drains.
//!
//! At SIGTERM, HTTP/2 clients get GOAWAY and finish their calls, but a
//! server stream proxied to an upstream has no end of its own: Pingora
//! would cut it when the grace period runs out, with no status, and the
//! client could not tell a shutdown from a broken network. Half way through
//! the grace period (the same `drain` moment at which HTTP/1.1 gRPC-web
//! streams are ended, `connections.rs`), every upstream connection's reads
//! fail; each call still open on one then fails in `fail_to_proxy`, which
//! ends it with UNAVAILABLE "the gateway is shutting down; reconnect" in
//! its trailers. Clients reconnect (to another gateway replica) and resume.
//!
//! Pingora takes a custom L4 connector for this (`PeerOptions::custom_l4`):
//! a TCP connection wrapped as a "virtual socket".

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use munity_platform::shutdown::ShutdownToken;
use pingora_core::{
    Error, ErrorType,
    connectors::l4::Connect,
    protocols::l4::{
        socket::SocketAddr,
        stream::Stream,
        virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream},
    },
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Connects to upstreams over TCP, with connections that end when `drain`
/// is cancelled.
#[derive(Debug, Clone)]
pub struct DrainingConnector {
    drain: ShutdownToken,
    timeout: Duration,
}

impl DrainingConnector {
    pub fn new(drain: ShutdownToken, timeout: Duration) -> Self {
        DrainingConnector { drain, timeout }
    }
}

#[async_trait::async_trait]
impl Connect for DrainingConnector {
    async fn connect(&self, addr: &SocketAddr) -> pingora_core::Result<Stream> {
        let inet = *addr.as_inet().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstreams are TCP addresses")
        })?;
        let stream =
            match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(inet)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let kind = if error.kind() == std::io::ErrorKind::ConnectionRefused {
                        ErrorType::ConnectRefused
                    } else {
                        ErrorType::ConnectError
                    };
                    return Err(Error::because(kind, format!("connecting to {inet}"), error));
                }
                Err(_) => {
                    return Err(Error::explain(
                        ErrorType::ConnectTimedout,
                        format!("timeout {:?} connecting to {inet}", self.timeout),
                    ));
                }
            };
        // gRPC is small messages both ways: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let socket = DrainingSocket {
            stream,
            drained: Box::pin(self.drain.clone().cancelled_owned()),
        };
        Ok(VirtualSocketStream::new(Box::new(socket)).into())
    }
}

/// A TCP connection whose reads fail once the gateway drains.
struct DrainingSocket {
    stream: tokio::net::TcpStream,
    drained: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for DrainingSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainingSocket")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl VirtualSocket for DrainingSocket {
    fn set_socket_option(&self, option: VirtualSockOpt) -> std::io::Result<()> {
        match option {
            VirtualSockOpt::NoDelay => self.stream.set_nodelay(true),
            // Keepalive probes are HTTP/2 pings here (`h2_ping_interval`).
            _ => Ok(()),
        }
    }
}

impl AsyncRead for DrainingSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the gateway is draining its upstream connections",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for DrainingSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
