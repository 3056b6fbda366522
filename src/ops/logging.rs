//! Logging through `tracing`: human-readable by default, JSON with `STOCKSYNC_LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

use super::config::Config;

pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr is a pipe whose reader went away) is
        // dropped. By default the subscriber reports it with eprint!, which panics on the same
        // broken stderr and took the task that logged (capture, dispatch, shutdown) with it.
        .log_internal_errors(false)
        // Colour codes only for a terminal, not for journald, files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init: tests and the demo may initialise twice.
    let _ = if config.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
