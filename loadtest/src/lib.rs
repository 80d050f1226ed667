//! Relaydesk's load harness, as a library: the scenarios (`scenarios::{connect, chat,
//! fanout, storm, soak}`) take a config and return a [`report::Report`]; `main.rs` is the CLI
//! around them and the integration tests call them directly.
//!
//! It speaks only the public contracts — wire protocol v1 and HTTP API v1 — and builds its
//! own world (tenant, agents, visitors, conversations) from an operator token, so it runs
//! against any deployment.

pub mod client;
pub mod machine;
pub mod peer;
pub mod pool;
pub mod report;
pub mod scenarios;
pub mod setup;
pub mod slo;
pub mod stages;
pub mod stats;
pub mod worker;

pub use report::Report;
pub use scenarios::Common;
pub use setup::Target;
