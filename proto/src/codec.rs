//! The codec every generated Munity server and client uses (set in
//! `build.rs`): prost encoding, plus two things a server owes its callers
//! on every request message, whatever the service:
//!
//! - bytes that do not decode as the request type are the caller's fault:
//!   INVALID_ARGUMENT "the request is not a valid <type> message: ...",
//!   not tonic's INTERNAL;
//! - the request is checked against the rules its descriptors declare
//!   ([`crate::validate`]) before the handler sees it.
//!
//! Only request types (messages some method takes) are treated so. A
//! response a client cannot decode stays INTERNAL, and responses are not
//! checked: data already stored must stay readable.

use std::marker::PhantomData;

use bytes::Buf;
use prost::{Message, Name};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};

use crate::{
    bad_request::{FieldViolations, invalid_argument},
    validate::{self, RequestCheck},
};

/// `tonic_prost::ProstCodec` with request checks on decode.
#[derive(Debug, Clone)]
pub struct MunityCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for MunityCodec<T, U> {
    fn default() -> Self {
        MunityCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for MunityCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = MunityDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        let name = U::full_name();
        MunityDecoder {
            request: validate::is_request(&name),
            check: validate::request_check(&name).filter(RequestCheck::has_rules),
            name,
            _type: PhantomData,
        }
    }
}

/// Decodes `U`; see the module docs.
#[derive(Debug)]
pub struct MunityDecoder<U> {
    name: String,
    /// Some method takes `U` as its request.
    request: bool,
    /// `U`'s rules, when it has any.
    check: Option<RequestCheck>,
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for MunityDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let Some(check) = self.check else {
            return U::decode(buf).map(Some).map_err(|e| self.undecodable(e));
        };
        let bytes = buf.copy_to_bytes(buf.remaining());
        let message = U::decode(bytes.as_ref()).map_err(|e| self.undecodable(e))?;
        let mut violations = FieldViolations::new();
        check.check(&bytes, &mut violations);
        if violations.is_empty() {
            Ok(Some(message))
        } else {
            Err(invalid_argument(&violations))
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl<U> MunityDecoder<U> {
    fn undecodable(&self, error: prost::DecodeError) -> Status {
        if self.request {
            Status::invalid_argument(undecodable_message(&self.name, &error))
        } else {
            Status::internal(error.to_string())
        }
    }
}

/// The one wording of a request that is not a valid message of its type.
pub fn undecodable_message(type_name: &str, error: &dyn std::fmt::Display) -> String {
    format!("the request is not a valid {type_name} message: {error}")
}
