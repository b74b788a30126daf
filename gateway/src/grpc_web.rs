//! gRPC-web at the edge, so browsers reach every service and services speak
//! only gRPC.
//!
//! Requests: `application/grpc-web(+proto)` bodies are gRPC frames already;
//! `application/grpc-web-text(+proto)` bodies are base64 and are decoded as
//! they stream. Both go upstream as `application/grpc` over HTTP/2.
//! Responses: the upstream's trailers become a final frame in the body
//! (flag `0x80`, then `name:value\r\n` lines), as the gRPC-web protocol says;
//! in text mode every chunk is base64-encoded on its own, padding included,
//! as soon as it arrives: holding back a partial 3-byte group would delay the
//! end of a streamed message until the next one. Text clients decode each
//! 4-character group independently (the official grpc-web client does), so
//! padding between chunks is fine, and this gateway decodes requests the
//! same way.
//!
//! Browsers call from other origins: CORS is in `cors.rs`.

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::{BufMut, Bytes, BytesMut};

/// How a gRPC-web call's bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Text,
}

impl Encoding {
    /// The gRPC-web encoding of a request, from its `content-type`.
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        let base = content_type.split(';').next().unwrap_or("").trim();
        match base {
            "application/grpc-web" | "application/grpc-web+proto" => Some(Encoding::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Some(Encoding::Text),
            _ => None,
        }
    }

    pub fn response_content_type(self) -> &'static str {
        match self {
            Encoding::Binary => "application/grpc-web+proto",
            Encoding::Text => "application/grpc-web-text+proto",
        }
    }
}

/// Per-call translation state.
#[derive(Debug)]
pub struct WebCall {
    pub encoding: Encoding,
    /// Base64 characters of the request not yet decodable (fewer than 4).
    request_pending: Vec<u8>,
}

/// The request body was not valid base64.
#[derive(Debug, thiserror::Error)]
#[error("grpc-web-text request body is not valid base64")]
pub struct BadBase64;

impl WebCall {
    pub fn new(encoding: Encoding) -> Self {
        WebCall {
            encoding,
            request_pending: Vec::new(),
        }
    }

    /// Decodes a text-mode request chunk. Padded segments may follow each
    /// other (clients encode message by message), so every 4-character group
    /// is decoded on its own.
    pub fn decode_request(&mut self, chunk: &[u8]) -> Result<Bytes, BadBase64> {
        self.request_pending
            .extend(chunk.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let complete = self.request_pending.len() / 4 * 4;
        let mut decoded = BytesMut::with_capacity(complete / 4 * 3);
        let mut group = [0u8; 3];
        for quantum in self.request_pending[..complete].chunks_exact(4) {
            let written = STANDARD
                .decode_slice(quantum, &mut group)
                .map_err(|_| BadBase64)?;
            decoded.put_slice(&group[..written]);
        }
        self.request_pending.drain(..complete);
        Ok(decoded.freeze())
    }

    /// Whether undecodable characters are left at the end of the request.
    pub fn request_incomplete(&self) -> bool {
        !self.request_pending.is_empty()
    }

    /// Encodes a response chunk for the client. Binary mode passes through.
    pub fn encode_response(&self, chunk: &[u8]) -> Bytes {
        match self.encoding {
            Encoding::Binary => Bytes::copy_from_slice(chunk),
            Encoding::Text => Bytes::from(STANDARD.encode(chunk)),
        }
    }

    /// The final body frame carrying the trailers, encoded for the client.
    pub fn trailers_frame(&self, trailers: &http::HeaderMap) -> Bytes {
        self.encode_response(&trailer_frame(trailers))
    }
}

/// A gRPC-web trailer frame: flag `0x80`, 4-byte big-endian length, then
/// the trailers as HTTP/1 header lines with lower-case names.
pub fn trailer_frame(trailers: &http::HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = Vec::with_capacity(5 + block.len());
    frame.push(0x80);
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type("application/grpc-web"),
            Some(Encoding::Binary)
        );
        assert_eq!(
            Encoding::from_content_type("application/grpc-web+proto"),
            Some(Encoding::Binary)
        );
        assert_eq!(
            Encoding::from_content_type("application/grpc-web-text; charset=utf-8"),
            Some(Encoding::Text)
        );
        assert_eq!(Encoding::from_content_type("application/grpc"), None);
    }

    #[test]
    fn text_requests_decode_across_chunks_and_padded_segments() {
        let mut call = WebCall::new(Encoding::Text);
        // Two messages encoded separately, each padded, split mid-group.
        let first = STANDARD.encode([0u8, 0, 0, 0, 1, 7]);
        let second = STANDARD.encode([0u8, 0, 0, 0, 0]);
        let text = format!("{first}{second}");
        let (a, b) = text.split_at(5);
        let mut out = call.decode_request(a.as_bytes()).unwrap().to_vec();
        out.extend_from_slice(&call.decode_request(b.as_bytes()).unwrap());
        assert_eq!(out, [0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0]);
        assert!(!call.request_incomplete());
        assert!(call.decode_request(b"!!!!").is_err());
    }

    #[test]
    fn text_responses_are_sent_at_once_and_decode_group_by_group() {
        let call = WebCall::new(Encoding::Text);
        let mut encoded = Vec::new();
        for chunk in [&[1u8, 2][..], &[3, 4, 5, 6, 7], &[8]] {
            encoded.extend_from_slice(&call.encode_response(chunk));
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        encoded.extend_from_slice(&call.trailers_frame(&trailers));
        // What a text client does: decode the stream one group at a time.
        let decoded = WebCall::new(Encoding::Text)
            .decode_request(&encoded)
            .unwrap();
        assert_eq!(&decoded[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decoded[8], 0x80);
        assert_eq!(&decoded[13..], b"grpc-status:0\r\n");
    }
}
