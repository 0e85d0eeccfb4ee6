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
//!
//! Per line, the common values (integers, booleans, whole numbers, plain ASCII strings)
//! and the timestamp are written without `core::fmt`, and a span's fields are gathered
//! in a reused buffer; a test compares every value type with the default format.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Largest field buffer a thread keeps between spans.
const SCRATCH_KEEP_BYTES: usize = 16 * 1024;

/// Field formatter: `name=value` pairs (values in their `Debug` form) separated by
/// spaces, the message as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        thread_local! {
            static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
        }
        // A span's fields land in a new, empty string: gathered in a reused buffer first,
        // they are copied there with one allocation instead of growing it field by field.
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.clear();
                let mut v = PlainVisitor::new(Writer::new(&mut *scratch));
                fields.record(&mut v);
                let result = v.result;
                let mut writer = writer;
                let result = result.and_then(|()| writer.write_str(&scratch));
                // An unusually long span keeps no large buffer alive on this thread.
                if scratch.capacity() > SCRATCH_KEEP_BYTES {
                    *scratch = String::new();
                }
                result
            }
            Err(_) => {
                let mut v = PlainVisitor::new(writer);
                fields.record(&mut v);
                v.result
            }
        })
    }
}

/// The visitor of [`PlainFields`].
#[derive(Debug)]
pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl<'a> PlainVisitor<'a> {
    /// A visitor writing to `writer`.
    pub fn new(writer: Writer<'a>) -> Self {
        Self {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }

    /// Writes the separator and `name=`; false when the field is skipped (a `log`
    /// record's metadata, or an earlier write failed).
    fn start(&mut self, name: &str) -> bool {
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let sep = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        self.result = self
            .writer
            .write_str(sep)
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='));
        self.result.is_ok()
    }

    /// Writes a value that is already text (a number's digits, `true`, a quoted string).
    fn value(&mut self, field: &Field, text: &str) {
        if self.start(field.name()) {
            self.result = self.writer.write_str(text);
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else if value
            .bytes()
            .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
        {
            // Printable ASCII without quotes or backslashes: its `Debug` form is the text
            // in quotes, written without the formatting machinery.
            if self.start(field.name()) {
                self.result = self
                    .writer
                    .write_char('"')
                    .and_then(|()| self.writer.write_str(value))
                    .and_then(|()| self.writer.write_char('"'));
            }
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, Digits::new(value, false).as_str())
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, Digits::new(value.unsigned_abs(), value < 0).as_str())
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, if value { "true" } else { "false" })
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // A whole number below 2^53 prints as its digits and `.0` (a score, a price);
        // anything else (fractions, exponents, NaN, -0.0) through `Debug`.
        if value.fract() == 0.0
            && value.abs() < 9.0e15
            && (value != 0.0 || value.is_sign_positive())
        {
            let digits = Digits::new(value.abs() as u64, value < 0.0);
            if self.start(field.name()) {
                self.result = self
                    .writer
                    .write_str(digits.as_str())
                    .and_then(|()| self.writer.write_str(".0"));
            }
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
        if name == "message" {
            // Metadata of `log` records is skipped; the message goes out as it is.
            if self.result.is_err() {
                return;
            }
            let sep = if self.is_empty { "" } else { " " };
            self.is_empty = false;
            self.result = self
                .writer
                .write_str(sep)
                .and_then(|()| write!(Escaping(&mut self.writer), "{value:?}"));
        } else if self.start(name) {
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

/// The decimal digits of an integer, with its sign, in a buffer on the stack.
struct Digits {
    buf: [u8; 21],
    start: usize,
}

impl Digits {
    fn new(mut n: u64, negative: bool) -> Self {
        let mut buf = [0u8; 21];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if negative {
            start -= 1;
            buf[start] = b'-';
        }
        Self { buf, start }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits and '-' were written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or_default()
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
        if write_time(&mut writer).is_err() {
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
        // The event's own fields straight into the line (no intermediate string).
        let mut fields = PlainVisitor::new(writer.by_ref());
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The current time as the default format writes it (`2026-01-01T00:00:00.000000Z`).
/// `humantime` writes the same text from a fixed buffer, without a formatting call per
/// part; it covers the years 1970 to 9999, and any other time goes the default way.
fn write_time(writer: &mut Writer<'_>) -> fmt::Result {
    let now = std::time::SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) if since.as_secs() < YEAR_10000_SECS => {
            write!(writer, "{}", humantime::format_rfc3339_micros(now))
        }
        _ => SystemTime.format_time(writer),
    }
}

/// 10000-01-01T00:00:00Z in seconds since the epoch.
const YEAR_10000_SECS: u64 = 253_402_300_800;

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
        // Every value type the fast paths write, next to the ones they hand to `Debug`.
        tracing::info!(
            plain = "a b:c/d.e-f~",
            quoted = "say \"hi\"",
            backslash = "a\\b",
            unicode = "é “x”",
            newline = "a\nb",
            empty = "",
            big = u64::MAX,
            zero = 0u64,
            min = i64::MIN,
            negative = -42i64,
            no = false,
            whole = -3.0,
            zero_f = 0.0,
            minus_zero = -0.0,
            fraction = 0.1,
            large = 1e15,
            huge = 1e16,
            nan = f64::NAN,
            inf = f64::NEG_INFINITY,
            tiny = 1e-7,
            "values"
        );
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
        assert_eq!(plain.len(), 4);
        assert!(plain[0].starts_with(
            r#" INFO grpc.server{otel.kind="server" port=7}:route{task.id=T-1 decision="multi"}: service_kit::log_format::tests: task routed task.id=T-1 bytes=80 ok=true score=2.5"#
        ), "{}", plain[0]);
        assert!(plain[1].contains(r#"type="x""#), "{}", plain[1]);
        assert!(!plain[1].contains('\x1b'), "{}", plain[1]);
        assert!(plain[2].contains(r#"plain="a b:c/d.e-f~""#), "{}", plain[2]);
    }

    #[test]
    fn the_timestamp_matches_the_default_one() {
        // Both read the clock: compare to the second, retrying across a second boundary.
        let mut same = false;
        for _ in 0..3 {
            let (mut ours, mut default) = (String::new(), String::new());
            write_time(&mut Writer::new(&mut ours)).unwrap();
            SystemTime
                .format_time(&mut Writer::new(&mut default))
                .unwrap();
            assert_eq!(ours.len(), default.len(), "{ours} vs {default}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            if ours[..19] == default[..19] {
                same = true;
                break;
            }
        }
        assert!(same);
    }
}
