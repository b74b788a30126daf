//! A gRPC-web request body as a browser (or an attacker) sends it: binary
//! or base64 text, in chunks split anywhere. Decoding must never panic, and
//! text decoding must agree with decoding the whole body at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use munity_gateway::fuzzing::{Encoding, WebCall, single_message};

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let encoding = if control & 1 == 0 {
        Encoding::Binary
    } else {
        Encoding::Text
    };
    let chunk = usize::from(control >> 1).max(1);
    let mut chunked = WebCall::new(encoding);
    let mut decoded = Vec::new();
    let mut failed = false;
    for piece in body.chunks(chunk) {
        match chunked.decode_request(piece) {
            Ok(bytes) => decoded.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let mut whole = WebCall::new(encoding);
    match whole.decode_request(body) {
        Ok(bytes) if !failed => {
            assert_eq!(
                bytes.as_ref(),
                decoded.as_slice(),
                "chunking changed the decoding"
            );
            assert_eq!(whole.request_incomplete(), chunked.request_incomplete());
        }
        _ => {}
    }
    let _ = single_message(&decoded);
});
