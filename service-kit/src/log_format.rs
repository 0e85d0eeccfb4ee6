//! The plain-text log line (stderr not a terminal, so no colours), written without the
//! styling work of `tracing-subscriber`'s default text format: that format passes every
//! field name, `=`, span name, brace and colon through an ANSI style even when colours
//! are off, which made formatting most of the cost of a decision line. The bytes are
//! the same as the default format's without colours:
//!
//! `2026-01-01T00:00:00.000000Z  INFO span{a=1}:inner{b="x"}: target: message c=2`
//!
//! Messages are escaped like the default format does (no terminal control characters
//! from a message reach the log).

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Field formatter: `name=value` pairs (values in their `Debug` form) separated by
/// spaces, the message as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Self::Visitor {
        PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`PlainFields`].
#[derive(Debug)]
pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // As the default format: the error, then its sources as a list.
        match value.source() {
            Some(source) => {
                let name = field.name();
                let sources = Sources(source);
                self.record_debug(field, &format_args!("{value} {name}.sources={sources}"))
            }
            None => self.record_debug(field, &format_args!("{value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Metadata of `log` records, already shown as the target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if self.is_empty {
            self.is_empty = false;
        } else if let Err(e) = self.writer.write_char(' ') {
            self.result = Err(e);
            return;
        }
        self.result = if name == "message" {
            write!(Escaping(&mut self.writer), "{value:?}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.writer
                .write_str(name)
                .and_then(|()| self.writer.write_char('='))
                .and_then(|()| write!(self.writer, "{value:?}"))
        };
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// An error's sources as `[first, second]`.
struct Sources<'e>(&'e (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(e) = next {
            list.entry(&format_args!("{e}"));
            next = e.source();
        }
        list.finish()
    }
}

/// Writes through, escaping terminal control characters as the default format does.
struct Escaping<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.chars().any(is_control) {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                ch if is_control(ch) => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                ch => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

/// Characters a message must not carry to a terminal (C0 escapes, DEL, C1 codes).
fn is_control(ch: char) -> bool {
    matches!(
        ch,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// Event formatter writing the default text line without colours (see the module docs).
#[derive(Debug)]
pub struct PlainText {
    /// Lines of `log` records go through the default format, which knows their metadata.
    fallback: Format<Full, SystemTime>,
}

impl Default for PlainText {
    fn default() -> Self {
        Self {
            fallback: Format::default().with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for PlainText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.fields().field("log.target").is_some() {
            return self.fallback.format_event(ctx, writer, event);
        }
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_char(' ')?;
        writer.write_str(level(meta.level()))?;
        writer.write_char(' ')?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The level as the default format pads it.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_capture::Buffer;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn emit() {
        let span = tracing::info_span!("grpc.server", otel.kind = "server", port = 7u16);
        let _g = span.enter();
        let inner =
            tracing::info_span!("route", task.id = %"T-1", decision = tracing::field::Empty);
        inner.record("decision", "multi");
        let _i = inner.enter();
        tracing::info!(task.id = %"T-1", bytes = 80usize, ok = true, score = 2.5, "task routed");
        tracing::warn!(r#type = "x", "ctl \x1b[31m \u{85}");
        let e = Outer(std::io::Error::other("inner"));
        tracing::error!(error = &e as &(dyn std::error::Error + 'static), "failed");
    }

    fn lines(plain: bool) -> Vec<String> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false);
        if plain {
            let layer = layer
                .fmt_fields(PlainFields)
                .event_format(PlainText::default());
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        } else {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        }
        let text = buffer.text();
        // Everything after the timestamp, which differs between the runs.
        text.lines()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn lines_match_the_default_format_without_colours() {
        let plain = lines(true);
        assert_eq!(plain, lines(false));
        assert_eq!(plain.len(), 3);
        assert!(plain[0].starts_with(
            r#" INFO grpc.server{otel.kind="server" port=7}:route{task.id=T-1 decision="multi"}: service_kit::log_format::tests: task routed task.id=T-1 bytes=80 ok=true score=2.5"#
        ), "{}", plain[0]);
        assert!(plain[1].contains(r#"type="x""#), "{}", plain[1]);
        assert!(!plain[1].contains('\x1b'), "{}", plain[1]);
    }
}
