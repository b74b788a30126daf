//! gRPC calls by path with raw message bytes, for tests that walk the
//! descriptors (every method, whatever its types) or send what no
//! generated client would (bytes that do not decode).

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls `path` (`/package.Service/Method`) with one request message,
/// whatever the method's kind (unary, client or server streaming: the
/// wire is the same), with `token` as bearer if given. Returns the first
/// response message, or the status the call ended with.
pub async fn call(
    channel: &tonic::transport::Channel,
    path: &str,
    token: Option<&str>,
    message: Bytes,
) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(tokio_stream::once(message));
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    let path = path.parse().expect("a gRPC path");
    let mut responses = grpc.streaming(request, path, RawCodec).await?.into_inner();
    match responses.message().await? {
        Some(first) => Ok(first),
        None => Err(Status::ok("the call ended with no message")),
    }
}
