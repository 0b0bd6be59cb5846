//! Structured logs: `RUST_LOG` filters, `LOG_FORMAT` picks pretty or JSON lines, and
//! `log` records from dependencies (r2d2, actix) are bridged into tracing.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: a second call (tests start several apps in one process) keeps the first.
    let outcome = match format {
        LogFormat::Pretty => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if outcome.is_err() {
        tracing::debug!("tracing subscriber already installed");
    }
}
