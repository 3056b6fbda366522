//! Operations: the CLI, configuration, setup and preflight, status, the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`, `/api/status`, dashboard) and the long-running service
//! that ties capture and delivery together.

pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod logging;
pub mod resync;
pub mod service;
pub mod setup;
pub mod status;
