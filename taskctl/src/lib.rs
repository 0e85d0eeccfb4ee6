//! `taskctl`: a command-line client for the taskrouter router and executor, and a
//! self-contained demo that starts both services in one process and runs the plan's
//! scenarios through their gRPC APIs. See `docs/TASKCTL.md`.
//!
//! Exit codes: 0 ok; 1 unreachable endpoint, RPC or runtime error; 2 usage or
//! configuration error (including INVALID_ARGUMENT from a service); 3 the task ended
//! FAILED or CANCELLED (`run`, `watch`); the demo exits 1 when a scenario did not end
//! as expected, and `bench` when any request failed or a task did not complete.

pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod error;
pub mod input;
pub mod policy_diff;
pub mod render;
pub mod rollout;

use cli::{Cli, Command};
use error::{CliError, Exit};
use std::io::Write;
use std::process::ExitCode;

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

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

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    match &cli.command {
        Command::Route(a) => commands::route(&cli, a).await,
        Command::Submit(a) => commands::submit(&cli, a).await,
        Command::Run(a) => commands::run(&cli, a).await,
        Command::Get(a) => commands::get(&cli, a).await,
        Command::Watch(a) => commands::watch(&cli, a).await,
        Command::Cancel(a) => commands::cancel(&cli, a).await,
        Command::Policy(a) => match &a.action {
            None => commands::policy(&cli).await,
            Some(cli::PolicyAction::Diff(d)) => policy_diff::diff(&cli, d).await,
        },
        Command::Rollout(a) => rollout::run(&cli, a).await,
        Command::Demo(a) => demo::demo(&cli, a).await,
        Command::Bench(a) => bench::run(&cli, a).await,
    }
}

/// Parses the command line, noting whether `--router` was given (flag or environment).
fn parse() -> Result<Cli, clap::Error> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    cli.router_given = matches!(
        matches.value_source("router"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    Ok(cli)
}

/// The whole program: parse, run, print the error if any, and return the exit code.
pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        service_kit::telemetry::init_logging(service_kit::telemetry::LogFormat::Text);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit_err(&[format!("error: cannot start the async runtime: {e}")]);
            return Exit::Runtime.into();
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray tasks (e.g. a server the demo left draining).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            emit_err(&e.lines());
            e.exit().into()
        }
    }
}
