//! Logging through `tracing`: human-readable lines by default, JSON lines with
//! `LOG_FORMAT=json`. The level comes from `RUST_LOG` (default `info`): a level, or
//! comma-separated `target=level` directives such as `warn,balancer=debug`.

use std::fmt;
use std::str::FromStr;

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, JsonFields, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::ExtensionsMut;
use tracing_subscriber::util::SubscriberInitExt;

use crate::trace::RequestIds;

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
    let _ = subscriber(format, writer, ansi).with(filter_from_env(default_filter)).try_init();
}

/// The subscriber [`init`] installs, unfiltered: the registry, [`RequestIds`] (which write
/// a request span's ids into its fields when a line inside it is logged), and the `fmt`
/// layer of `format` writing to `writer`.
fn subscriber<W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // `RequestIds` beneath the `fmt` layer: a layered subscriber hands an event to the
    // inner layers first, so the ids are written before the line is.
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    let add = match format {
        LogFormat::Text => add_text,
        LogFormat::Json => add_json,
    };
    let registry = tracing_subscriber::registry().with(RequestIds::new(add));
    match format {
        LogFormat::Text => Box::new(registry.with(layer.with_target(false).fmt_fields(Fields))),
        LogFormat::Json => Box::new(registry.with(layer.json().flatten_event(true).with_current_span(false))),
    }
}

/// `record` added to a span's fields as the text format's `fmt` layer adds them.
fn add_text(extensions: &mut ExtensionsMut<'_>, record: &Record<'_>) -> fmt::Result {
    add_fields(&Fields, extensions.get_mut(), record)
}

/// `record` added to a span's fields as the JSON format's `fmt` layer adds them.
fn add_json(extensions: &mut ExtensionsMut<'_>, record: &Record<'_>) -> fmt::Result {
    add_fields(&JsonFields::new(), extensions.get_mut(), record)
}

fn add_fields<N>(format: &N, formatted: Option<&mut FormattedFields<N>>, record: &Record<'_>) -> fmt::Result
where
    N: for<'w> FormatFields<'w> + 'static,
{
    formatted.map_or(Ok(()), |formatted| format.add_fields(formatted, record))
}

/// The text format's fields: [`DefaultFields`]' text, with a plain `name=` written straight
/// when there are no colours.
///
/// `DefaultFields` paints each name and `=` in a style even with colours off; when every
/// request's span was formatted as it opened (`request{trace_id=.. span_id=..}`, before
/// [`RequestIds`]), that was about 4 % of the instructions of a data read. Here a field's value
/// is still written by [`DefaultVisitor`] when it is a message or a `log.` field (escapes,
/// skipping); any other is `name=value` with the value's `Debug`, as `DefaultVisitor` writes.
struct Fields;

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = Plain { writer, is_empty: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Plain<'w> {
    writer: Writer<'w>,
    is_empty: bool,
    result: fmt::Result,
}

impl Visit for Plain<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.by_default(|v| v.record_str(field, value), field);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(|v| v.record_error(field, value), field);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name == "message" || name.starts_with("log.") || name.starts_with("r#") {
            return self.by_default(|v| v.record_debug(field, value), field);
        }
        if !std::mem::take(&mut self.is_empty) {
            self.result = self.writer.write_char(' ');
        }
        self.result = self.result.and_then(|()| {
            self.writer.write_str(name)?;
            self.writer.write_char('=')?;
            write!(self.writer, "{value:?}")
        });
    }
}

impl Plain<'_> {
    /// `record` by a [`DefaultVisitor`] that knows whether a field came before.
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>), field: &Field) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = tracing_subscriber::field::VisitOutput::finish(visitor);
        // `DefaultVisitor` writes nothing, and no space, for `log.` fields.
        self.is_empty &= field.name().starts_with("log.");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::registry::{LookupSpan, Registry};

    use super::*;
    use crate::trace::TraceContext;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// What the text format writes for spans and events of every kind of field.
    fn lines_with<N>(fields: N, ansi: bool) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(ansi)
            .without_time()
            .with_target(false)
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736", span_id = %"00f067aa0ba902b7");
            let _request = request.enter();
            tracing::info!(status = 200, ms = 1.5, path = "/api/x", ok = true, "served \x1b[31m red");
            let inner = tracing::info_span!("inner", r#type = "t", n = -3, text = "quoted");
            let _inner = inner.enter();
            tracing::warn!(error = %"it broke", "second");
            let e = std::io::Error::other("io");
            tracing::error!(error = &e as &(dyn std::error::Error + 'static), "with an error");
            tracing::info!(message = "only a message", after = 1);
            tracing::info!(count = 2, "last");
            tracing::info!(count = 2);
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn plain_fields_write_what_default_fields_write() {
        let ours = lines_with(Fields, false);
        assert_eq!(ours, lines_with(DefaultFields::new(), false));
        assert!(ours.contains("request{trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7}"), "{ours}");
        assert_eq!(ours.lines().count(), 6, "{ours}");
        assert_eq!(lines_with(Fields, true), lines_with(DefaultFields::new(), true));
    }

    /// The lines `log` writes under [`init`]'s subscriber in `format`, at `info`.
    fn logged(format: LogFormat, log: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let filter = Targets::new().with_default(tracing::Level::INFO);
        tracing::subscriber::with_default(subscriber(format, buffer.clone(), false).with(filter), log);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// The text the `fmt` layer keeps for `span`'s fields, under the current subscriber.
    fn formatted<N: 'static>(span: &tracing::Span) -> String {
        span.with_subscriber(|(id, dispatch)| {
            let span = dispatch.downcast_ref::<Registry>().unwrap().span(id).unwrap();
            let fields = span.extensions().get::<FormattedFields<N>>().map(|f| f.fields.clone());
            fields.unwrap()
        })
        .unwrap()
    }

    #[test]
    fn a_request_span_formats_its_ids_only_when_a_line_inside_it_is_logged() {
        let context = TraceContext::root(false);
        let ids = format!("trace_id={} span_id={}", context.trace_hex(), context.span_hex());
        let lines = logged(LogFormat::Text, || {
            let quiet = TraceContext::root(false).span();
            quiet.in_scope(|| tracing::debug!("below the level: not logged"));
            assert_eq!(formatted::<Fields>(&quiet), "", "nothing logged, nothing formatted");

            let request = context.span();
            assert_eq!(formatted::<Fields>(&request), "");
            request.in_scope(|| {
                tracing::info!(status = 200, "first");
                let inner = tracing::info_span!("inner", n = 3);
                inner.in_scope(|| tracing::warn!("second"));
            });
            assert_eq!(formatted::<Fields>(&request), ids, "written once, by the first line");
            tracing::info!("outside");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with(&format!(" INFO request{{{ids}}}: first status=200")), "{lines:?}");
        assert!(lines[1].ends_with(&format!(" WARN request{{{ids}}}:inner{{n=3}}: second")), "{lines:?}");
        assert!(lines[2].ends_with(" INFO outside"), "{lines:?}");
    }

    #[test]
    fn json_lines_carry_a_request_spans_ids_under_spans() {
        let context = TraceContext::root(true);
        let lines = logged(LogFormat::Json, || {
            let request = context.span();
            request.in_scope(|| {
                tracing::info!(status = 200, "first");
                tracing::info!("second");
            });
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            let span = &json["spans"][0];
            let (trace_id, span_id) = (context.trace_hex().to_string(), context.span_hex().to_string());
            assert_eq!(span["name"], "request", "{line}");
            assert_eq!(
                (span["trace_id"].as_str(), span["span_id"].as_str()),
                (Some(&*trace_id), Some(&*span_id)),
                "{line}"
            );
        }
    }

    #[test]
    fn under_another_subscriber_a_request_span_records_its_ids_at_once() {
        let buffer = Buffer::default();
        let plain = tracing_subscriber::fmt().with_writer(buffer.clone()).with_ansi(false).finish();
        let context = TraceContext::root(false);
        tracing::subscriber::with_default(plain, || context.span().in_scope(|| tracing::info!("inside")));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let ids = format!("request{{trace_id={} span_id={}}}", context.trace_hex(), context.span_hex());
        assert!(text.contains(&ids), "{text}");
    }
}
