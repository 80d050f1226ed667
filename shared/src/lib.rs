//! Relaydesk's shared vocabulary: wire protocol v1 types ([`wire`]), connection and
//! session tokens ([`token`]), the error and close-code taxonomy ([`error`], [`close`]),
//! the Redis Streams layout between edges and core-api ([`bus`]), and the rules every
//! ingress applies to client input ([`input`]).
//!
//! Invariant: only this crate defines types that cross a process boundary.

pub mod audit;
pub mod bus;
pub mod close;
pub mod error;
pub mod input;
pub mod telemetry;
pub mod token;
pub mod wire;

pub use close::CloseCode;
pub use error::ErrorCode;
