//! What every Munity repository shares, whichever service owns it.
//!
//! A service keeps one repository trait and two backends of it, held to one
//! contract suite (`munity_testkit::contract_suite!`). This crate is what
//! those backends have in common, so a new service writes its tables and
//! queries and nothing else:
//!
//! - [`StoreError`], [`Page`] and [`page_token`]: errors, listings in a stable
//!   order, and the opaque page tokens clients pass back;
//! - [`embedded`]: a redb file per service (the embedded default): blocking
//!   work off the async workers, JSON records, reads by key and by range;
//! - [`cql`]: ScyllaDB (any CQL v4 server) through the `scylla` crate:
//!   connecting and applying a schema, prepared statements, lightweight
//!   transactions, typed rows, TTLs;
//! - [`Millis`] and [`now_millis`]: the one time unit of stored records.

#![forbid(unsafe_code)]

pub mod cql;
pub mod embedded;
pub mod page_token;

use uuid::Uuid;

/// Milliseconds since the Unix epoch: the one time unit of stored records.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What can go wrong in storage, in any backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A unique value is taken (e.g. the email of a new account).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The store could not be reached in time; retrying may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: corruption, a bug, a schema mismatch.
    #[error("storage failure: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The one table from storage errors to gRPC statuses, the same codes and
/// wording in every service (whose own error enums wrap a `StoreError`
/// and hand it here).
impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        use munity_platform::error::{internal, unavailable};
        match error {
            StoreError::Conflict(what) => {
                tonic::Status::already_exists(format!("{what} already exists"))
            }
            StoreError::NotFound(what) => tonic::Status::not_found(format!("{what} not found")),
            StoreError::Unavailable(cause) => unavailable("storage is unavailable", &cause),
            StoreError::Internal(cause) => internal("storage failed", &cause),
        }
    }
}

/// Any error that is neither a conflict nor a missing record.
pub fn internal(error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(error.to_string())
}

/// A page of a listing, in the backend's stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass to the next call to continue after the last item; `None` when
    /// the listing is exhausted.
    pub next_after: Option<Uuid>,
}

/// Turns "one more than asked" into a page: backends fetch `limit + 1` rows
/// so they know whether another page follows without an extra query.
pub fn page_from<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> Uuid) -> Page<T> {
    let next_after = if items.len() > limit {
        items.truncate(limit);
        items.last().map(&key)
    } else {
        None
    };
    Page { items, next_after }
}

/// The page size a client asked for: `default` for 0, at most `max`.
pub fn page_size(requested: u32, default: u32, max: u32) -> usize {
    match requested {
        0 => default as usize,
        n => n.min(max) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_more_than_asked_means_another_page() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let page = page_from(ids.clone(), 2, |id| *id);
        assert_eq!(page.items, ids[..2]);
        assert_eq!(page.next_after, Some(ids[1]));
        let last = page_from(ids[..2].to_vec(), 2, |id| *id);
        assert_eq!(last.next_after, None);
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0, 50, 500), 50);
        assert_eq!(page_size(7, 50, 500), 7);
        assert_eq!(page_size(10_000, 50, 500), 500);
    }
}
