//! Page tokens: the opaque string a listing returns so the client can ask
//! for the next page. It encodes the last item's id (URL-safe base64, no
//! padding); anything else a client sends back is refused, as a violation
//! of the request's `page_token` field that every service's error enum
//! takes (`?` is the whole of a handler's parsing).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use munity_platform::error::FieldViolations;
use uuid::Uuid;

/// The token for "continue after `after`"; empty when the listing is done.
pub fn encode(after: Option<Uuid>) -> String {
    after
        .map(|id| URL_SAFE_NO_PAD.encode(id.as_bytes()))
        .unwrap_or_default()
}

/// The id a token continues after; `None` for the empty token (first page).
pub fn decode(token: &str) -> Result<Option<Uuid>, FieldViolations> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(invalid)
}

/// The token for "continue after this position" in a listing ordered by
/// time first (time ms, id, a sub-position); empty when the listing is done.
pub fn encode_at(after: Option<(i64, Uuid, u32)>) -> String {
    after
        .map(|(at, id, sub)| {
            let mut bytes = Vec::with_capacity(28);
            bytes.extend_from_slice(&at.to_be_bytes());
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(&sub.to_be_bytes());
            URL_SAFE_NO_PAD.encode(bytes)
        })
        .unwrap_or_default()
}

/// The position an [`encode_at`] token continues after.
pub fn decode_at(token: &str) -> Result<Option<(i64, Uuid, u32)>, FieldViolations> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != 28 {
        return Err(invalid());
    }
    let at = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| invalid())?);
    let id = Uuid::from_slice(&bytes[8..24]).map_err(|_| invalid())?;
    let sub = u32::from_be_bytes(bytes[24..].try_into().map_err(|_| invalid())?);
    Ok(Some((at, id, sub)))
}

/// A page token that no listing returned.
fn invalid() -> FieldViolations {
    let mut violations = FieldViolations::new();
    violations.add("page_token", "is not a page token returned by this method");
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        assert_eq!(decode(&encode(Some(id))).unwrap(), Some(id));
        assert_eq!(encode(None), "");
        assert_eq!(decode("").unwrap(), None);
        assert!(decode("not-a-token!").is_err());
        assert!(decode("AAAA").is_err());
        let at = (1_700_000_000_000, id, 3);
        assert_eq!(decode_at(&encode_at(Some(at))).unwrap(), Some(at));
        assert_eq!(decode_at("").unwrap(), None);
        assert!(
            decode_at(&encode(Some(id))).is_err(),
            "another listing's token"
        );
    }
}
