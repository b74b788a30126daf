//! A response on its way to a browser: message frames and the trailers
//! frame, encoded for gRPC-web. Text encoding must decode back to exactly
//! the frames sent, however the chunks fall.
#![no_main]

use libfuzzer_sys::fuzz_target;
use munity_gateway::fuzzing::{Encoding, WebCall, trailer_frame};

fuzz_target!(|data: &[u8]| {
    let (frames, trailer_bytes) = data.split_at(data.len() / 2);
    let mut trailers = http::HeaderMap::new();
    for line in trailer_bytes.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            trailers.append(name, value);
        }
    }
    let frame = trailer_frame(&trailers);
    assert_eq!(frame[0], 0x80);
    assert_eq!(
        u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
        frame.len() - 5
    );

    let text = WebCall::new(Encoding::Text);
    let mut sent = Vec::new();
    let mut encoded = Vec::new();
    for chunk in frames.chunks(7) {
        sent.extend_from_slice(chunk);
        encoded.extend_from_slice(&text.encode_response(chunk));
    }
    sent.extend_from_slice(&frame);
    encoded.extend_from_slice(&text.trailers_frame(&trailers));
    let mut reader = WebCall::new(Encoding::Text);
    let decoded = reader
        .decode_request(&encoded)
        .expect("our own base64 decodes");
    assert_eq!(decoded.as_ref(), sent.as_slice());
    assert!(!reader.request_incomplete());
});
