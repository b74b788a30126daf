//! What every service's gRPC layer converts the same way: ids sent by
//! clients, and timestamps (stored as milliseconds since the Unix epoch).

use uuid::Uuid;

use crate::error::FieldViolations;

/// Parses an id sent by a client; a violation on `field` otherwise.
pub fn parse_id(raw: &str, field: &str, violations: &mut FieldViolations) -> Uuid {
    match Uuid::parse_str(raw.trim()) {
        Ok(id) => id,
        Err(_) => {
            if raw.trim().is_empty() {
                violations.add(field, "is required");
            } else {
                violations.add(field, "must be an id (a UUID)");
            }
            Uuid::nil()
        }
    }
}

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as milliseconds since the Unix epoch.
pub fn millis(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(timestamp.nanos.clamp(0, 999_999_999) / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_and_join_millis() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(millis(&t), 1_700_000_000_123);
        assert_eq!(millis(&timestamp(-1)), -1);
    }
}
