//! Dispatch (placeholder while delivery is written).
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct DispatchSettings {}

impl DispatchSettings {
    pub fn from_config(_config: &crate::ops::config::Config) -> Self {
        DispatchSettings {}
    }
}

pub async fn run(_pool: Pool, _settings: DispatchSettings, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}
