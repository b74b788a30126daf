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

/// One id sent by a client in `field`, for requests that carry just one.
pub fn one_id(raw: &str, field: &str) -> Result<Uuid, FieldViolations> {
    let mut violations = FieldViolations::new();
    let id = parse_id(raw, field, &mut violations);
    violations.into_result()?;
    Ok(id)
}

/// The earliest (0001-01-01T00:00:00Z) and last (9999-12-31T23:59:59Z)
/// second a protobuf Timestamp may hold, as the request checks define them.
pub use munity_proto::validate::{
    MAX_TIMESTAMP_SECS as TIMESTAMP_MAX_SECONDS, MIN_TIMESTAMP_SECS as TIMESTAMP_MIN_SECONDS,
};

/// Milliseconds since the Unix epoch as a protobuf timestamp, clamped to
/// the range protobuf allows (years 1 to 9999): a time stored before a
/// service refused such input must still reach clients, whose JSON mapping
/// (grpcurl, the gateway's HTTP/JSON) refuses a Timestamp outside it.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    let seconds = millis.div_euclid(1000);
    if seconds < TIMESTAMP_MIN_SECONDS {
        return prost_types::Timestamp {
            seconds: TIMESTAMP_MIN_SECONDS,
            nanos: 0,
        };
    }
    if seconds > TIMESTAMP_MAX_SECONDS {
        return prost_types::Timestamp {
            seconds: TIMESTAMP_MAX_SECONDS,
            nanos: 999_000_000,
        };
    }
    prost_types::Timestamp {
        seconds,
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

    #[test]
    fn outgoing_timestamps_stay_in_protobufs_range() {
        // Year 10000 (accepted by events-svc once) and far before year 1.
        let late = timestamp(253_402_300_800 * 1000);
        assert_eq!(
            (late.seconds, late.nanos),
            (TIMESTAMP_MAX_SECONDS, 999_000_000)
        );
        assert_eq!(timestamp(i64::MAX).seconds, TIMESTAMP_MAX_SECONDS);
        let early = timestamp(i64::MIN);
        assert_eq!((early.seconds, early.nanos), (TIMESTAMP_MIN_SECONDS, 0));
        let last = timestamp(TIMESTAMP_MAX_SECONDS * 1000 + 999);
        assert_eq!(
            (last.seconds, last.nanos),
            (TIMESTAMP_MAX_SECONDS, 999_000_000)
        );
    }
}
