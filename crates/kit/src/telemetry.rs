//! Logging through `tracing`: human-readable lines by default, JSON lines with
//! `LOG_FORMAT=json`. The level comes from `RUST_LOG` (default `info`): a level, or
//! comma-separated `target=level` directives such as `warn,balancer=debug`.

use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" | "human" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(()),
        }
    }
}

/// The `RUST_LOG` filter, or `default` when unset or unreadable.
///
/// `Targets` rather than `EnvFilter`: the same directives for what we log, without a regex
/// engine in the binary that every process maps.
pub fn filter_from_env(default: &str) -> Targets {
    let parse = |s: &str| s.parse::<Targets>().ok();
    std::env::var("RUST_LOG").ok().and_then(|v| parse(&v)).or_else(|| parse(default)).unwrap_or_default()
}

/// Installs the global subscriber writing to `writer` (the process's stderr, whose being a
/// terminal decides colours), at `info` unless `RUST_LOG` says otherwise. Calling it twice
/// is harmless (the second call does nothing), so tests may call it freely.
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    init_with(format, writer, "info")
}

/// [`init`] with another default filter (`RUST_LOG` still wins).
pub fn init_with<W>(format: LogFormat, writer: W, default_filter: &str)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Colours only for a person at a terminal: not in files, pipes, or with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(writer).with_ansi(ansi);
    let filter = filter_from_env(default_filter);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = match format {
        LogFormat::Text => builder.with_target(false).finish().with(filter).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).finish().with(filter).try_init(),
    };
}
