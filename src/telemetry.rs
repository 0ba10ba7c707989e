//! Logging through `tracing`: human-readable by default, JSON with
//! `ATELIER_LOG_FORMAT=json`; level from `RUST_LOG` (default `info`), except
//! for dependencies that would log credentials.

use tracing_subscriber::EnvFilter;

/// Crates whose debug output carries credentials, held at `info` whatever
/// `RUST_LOG` asks: reqsign (opendal's request signer) prints the S3 secret
/// key when it loads credentials.
const CREDENTIAL_LOGGERS: &[&str] = &["reqsign=info"];

pub fn init() {
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    for directive in CREDENTIAL_LOGGERS {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let json = std::env::var("ATELIER_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
