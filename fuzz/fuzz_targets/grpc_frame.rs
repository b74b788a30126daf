//! gRPC message framing (5-byte header, then the message) as the gateway
//! reads a request of exactly one message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use munity_gateway::fuzzing::single_message;

fuzz_target!(|data: &[u8]| {
    if let Some(message) = single_message(data) {
        assert_eq!(data.len(), message.len() + 5);
        assert_eq!(data[0], 0);
    }
});
