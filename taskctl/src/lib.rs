//! `taskctl`: a command-line client for the taskrouter router and executor, and a
//! self-contained demo that starts both services in one process and runs the plan's
//! scenarios through their gRPC APIs. See `docs/TASKCTL.md`.
//!
//! Exit codes: 0 ok; 1 unreachable endpoint, RPC or runtime error; 2 usage or
//! configuration error (including INVALID_ARGUMENT from a service); 3 the task ended
//! FAILED or CANCELLED (`run`, `watch`); the demo exits 1 when a scenario did not end
//! as expected, and `bench` when any request failed or a task did not complete.

// `render::state_json` is one `json!` object with every SessionState field.
#![recursion_limit = "256"]

pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod error;
pub mod input;
pub mod listing;
pub mod names;
/// Terminal output, shared with the load generator (which `taskctl bench` fronts).
pub use taskrouter_loadgen::output;
pub mod policy_diff;
pub mod render;
pub mod rollout;
pub mod terminal;

use cli::{Cli, Command};
use error::{CliError, Exit};
use output::emit_err;
use std::process::ExitCode;

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
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
        Command::List(a) => listing::list(&cli, a).await,
        Command::Top(a) => listing::top(&cli, a).await,
        Command::Resume(a) => commands::resume(&cli, a).await,
        Command::Approve(a) => commands::decide(&cli, a, true).await,
        Command::Reject(a) => commands::decide(&cli, a, false).await,
        Command::Policy(a) => match &a.action {
            None => commands::policy(&cli).await,
            Some(cli::PolicyAction::Diff(d)) => policy_diff::diff(&cli, d).await,
        },
        Command::Rollout(a) => rollout::run(&cli, a).await,
        Command::Demo(a) => demo::demo(&cli, a).await,
        Command::Bench(a) => bench(&cli, a).await,
    }
}

/// `taskctl bench`: the load generator with this command line's router, timeout and output.
async fn bench(cli: &Cli, args: &taskrouter_loadgen::BenchArgs) -> Result<Exit, CliError> {
    let options = taskrouter_loadgen::Options {
        router: cli.router_given.then(|| cli.router.clone()),
        timeout: cli.timeout,
        json: cli.json,
    };
    match taskrouter_loadgen::run(&options, args).await {
        Ok(taskrouter_loadgen::Verdict::Passed) => Ok(Exit::Ok),
        Ok(taskrouter_loadgen::Verdict::Failed) => Ok(Exit::Runtime),
        Err(taskrouter_loadgen::Error::Usage(m)) => Err(CliError::Usage(m)),
        Err(taskrouter_loadgen::Error::Runtime(m)) => Err(CliError::Runtime(m)),
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
