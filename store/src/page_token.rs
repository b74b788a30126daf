//! Page tokens: the opaque string a listing returns so the client can ask
//! for the next page. It encodes the last item's id (URL-safe base64, no
//! padding); anything else a client sends back is refused.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

/// The token for "continue after `after`"; empty when the listing is done.
pub fn encode(after: Option<Uuid>) -> String {
    after
        .map(|id| URL_SAFE_NO_PAD.encode(id.as_bytes()))
        .unwrap_or_default()
}

/// The id a token continues after; `None` for the empty token (first page).
pub fn decode(token: &str) -> Result<Option<Uuid>, InvalidPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or(InvalidPageToken)
}

/// A page token that no listing returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is not a page token returned by this method")]
pub struct InvalidPageToken;

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
    }
}
