//! The one shape of INVALID_ARGUMENT in Munity: a human message listing
//! every offending field, and a `google.rpc.BadRequest` detail carrying
//! them, which grpcurl prints, `tonic_types::StatusExt` decodes and the
//! gateway turns into JSON. Used by the request checks every call passes
//! ([`crate::validate`]) and, through `munity_platform::error`, by every
//! service's own rules.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Collects what is wrong with a request, field by field, so a client learns
/// every problem in one round trip rather than one per attempt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldViolations {
    violations: Vec<(String, String)>,
}

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid, and why.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push((field.into(), description.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn len(&self) -> usize {
        self.violations.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.violations
            .iter()
            .map(|(field, description)| (field.as_str(), description.as_str()))
    }

    /// `Ok(())` when nothing was recorded, the violations otherwise.
    pub fn into_result(self) -> Result<(), FieldViolations> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl std::fmt::Display for FieldViolations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .violations
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for FieldViolations {}

/// INVALID_ARGUMENT whose message lists the violations and whose details carry
/// them as `google.rpc.BadRequest`.
pub fn invalid_argument(violations: &FieldViolations) -> Status {
    let details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|(field, description)| FieldViolation::new(field, description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {violations}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_details_round_trip() {
        let mut violations = FieldViolations::new();
        violations.add("email", "must be a valid email address");
        violations.add("password", "must be at least 8 characters");
        let status = invalid_argument(&violations);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("email: must be a valid email address")
        );
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("BadRequest detail");
        let fields: Vec<&str> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["email", "password"]);
    }
}
