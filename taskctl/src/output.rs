//! Output to the terminal: a closed stdout or stderr (e.g. `| head`) is not worth a panic.

use std::io::Write;

/// Writes `text` to stdout. A closed stdout (e.g. `| head`) is not an error worth a panic.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes one pretty-printed JSON document and a newline to stdout.
pub fn emit_json(value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    emit(&format!("{text}\n"));
}

/// Writes lines to stderr, ignoring a closed stderr.
pub fn emit_err(lines: &[String]) {
    let mut err = std::io::stderr().lock();
    for line in lines {
        let _ = writeln!(err, "{line}");
    }
}
