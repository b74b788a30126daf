//! The platform crate: the one front door every Munity service goes through
//! for cross-cutting concerns, so that they behave alike.
//!
//! - [`service`]: the shape of a service ([`service::Service`]), the keys
//!   every service's section has, one generic `main`, and its entry in
//!   `munity dev`.
//! - [`config`]: layered typed configuration (TOML file, then `MUNITY_*`
//!   environment), with errors that name the bad key.
//! - [`policy`]: what the protos declare about each method (public, default
//!   quota, streaming) and which upstream serves each service.
//! - [`telemetry`]: logs (pretty or JSON), OTLP trace export, W3C trace
//!   context in gRPC metadata.
//! - [`deadline`]: `grpc-timeout`, and deadlines enforced on whole calls
//!   (server streams included).
//! - [`framing`]: gRPC message framing; one request message for methods
//!   that take one.
//! - [`error`]: building `tonic::Status` values, with `google.rpc.BadRequest`
//!   details for bad input.
//! - [`auth`]: access-token (JWT, EdDSA) verification against users-svc's
//!   JWKS, as a tower layer.
//! - [`revocation`]: access tokens revoked before they expire (sessions
//!   ended, subjects' tokens voided), as every verifier refuses them.
//! - [`server`]: serving gRPC with health, reflection, tracing, metrics and
//!   auth on a listener the caller bound.
//! - [`write_turn`]: a connection's writes wait one turn of the scheduler,
//!   so many streams' frames leave in one system call.
//! - [`metrics`]: every service's RED metrics, served at `GET /metrics`.
//! - [`wire`]: ids and timestamps as every gRPC layer converts them.
//! - [`peers`]: channels to other services, balanced over every replica
//!   their DNS name lists.
//! - [`shutdown`]: one cancellation token per process, tripped by SIGTERM or
//!   SIGINT.
//!
//! Storage helpers live in `munity-store`, test helpers in `munity-testkit`,
//! so that crates that need neither (the gateway) compile neither.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod deadline;
pub mod error;
pub mod framing;
pub mod metrics;
pub mod peers;
pub mod policy;
pub mod revocation;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod wire;
pub mod write_turn;
