//! Building `tonic::Status` values that clients can act on.
//!
//! Each service keeps one `thiserror` enum for its domain and maps it to a
//! status in one `From` impl; these helpers give every service the same
//! shape of error: a standard code, a human message, and for bad input a
//! `google.rpc.BadRequest` detail listing every offending field, which
//! grpcurl prints and `tonic_types::StatusExt` decodes.

use tonic::Status;

// One shape of INVALID_ARGUMENT for the request checks every call passes
// (in `munity_proto`, where the codec runs them) and every service's rules.
pub use munity_proto::bad_request::{FieldViolations, invalid_argument};

/// INTERNAL for failures the client cannot fix. The cause is logged here, with
/// the request's trace, and kept out of the message sent to the client.
pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %cause, "{context}");
    Status::internal(format!("{context}; the failure was logged"))
}

/// UNAVAILABLE for a dependency that is down or timing out: the client may
/// retry later.
pub fn unavailable(context: &str, cause: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %cause, "{context}");
    Status::unavailable(format!("{context}; try again shortly"))
}
