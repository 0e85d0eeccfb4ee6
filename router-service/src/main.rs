//! `router-service` binary: parses flags, sets up logging and metrics, binds the listener
//! and runs [`router_service::serve`] until SIGTERM/SIGINT.
//!
//! Exit codes: 0 after a clean shutdown (or a passing `--check-config`), 2 for invalid
//! configuration (a flag, env var, the policy file, a TLS or token file), 1 when the environment refuses
//! (the address cannot be bound, the metrics endpoint cannot start, the server fails).

use clap::Parser;
use router_service::{Args, Error, PolicyStore};
use service_kit::Shutdown;
use service_kit::telemetry::{install_prometheus, metrics_addr};
use std::process::ExitCode;

const CONFIG_ERROR: u8 = 2;
const RUNTIME_ERROR: u8 = 1;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap adds a usage hint on further lines; keep the one line that names the flag.
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or_default();
            eprintln!("{}", line.trim_end());
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let telemetry = match service_kit::telemetry::init("router-service", &args.telemetry) {
        Ok(t) => t,
        Err(e) => return fail(CONFIG_ERROR, &e.to_string()),
    };
    let code = run(args).await;
    telemetry.shutdown();
    code
}

async fn run(args: Args) -> ExitCode {
    let config = args.router_config();

    let metrics = match metrics_addr(&args.telemetry.metrics_listen) {
        Ok(addr) => addr,
        Err(e) => return fail(CONFIG_ERROR, &e.to_string()),
    };
    let policy_flag = |e: &Error| match &config.policy_path {
        Some(_) => format!("--policy {e}"),
        None => e.to_string(),
    };

    // Validate the policy before binding, so a bad file never looks like a live server.
    let version = match PolicyStore::load(config.policy_path.as_deref()) {
        Ok(store) => store.current().engine.version().to_string(),
        Err(e) => return fail(CONFIG_ERROR, &policy_flag(&e)),
    };
    if let Some(path) = &config.shadow_policy_path
        && let Err(e) = PolicyStore::load(Some(path))
    {
        return fail(CONFIG_ERROR, &format!("--shadow-policy {e}"));
    }
    service_kit::tls::install_crypto_provider();
    if let Err(e) = args.server.load_security() {
        return fail(CONFIG_ERROR, &e.to_string());
    }
    if let Err(e) = args.server.health_addr() {
        return fail(CONFIG_ERROR, &e.to_string());
    }
    if args.check_config {
        println!("config ok (policy version {version})");
        return ExitCode::SUCCESS;
    }

    if let Some(addr) = metrics
        && let Err(e) = install_prometheus(addr)
    {
        return fail(RUNTIME_ERROR, &e.to_string());
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(
                RUNTIME_ERROR,
                &format!("--listen {}: cannot bind: {e}", config.listen),
            );
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    tracing::info!(%addr, "router listening");

    match router_service::serve(config.clone(), listener, shutdown).await {
        Ok(()) => {
            tracing::info!("router stopped");
            ExitCode::SUCCESS
        }
        Err(
            e
            @ (Error::PolicyRead { .. } | Error::PolicyParse { .. } | Error::PolicyInvalid { .. }),
        ) => fail(CONFIG_ERROR, &policy_flag(&e)),
        Err(e @ Error::Config(_)) => fail(CONFIG_ERROR, &e.to_string()),
        Err(e) => fail(RUNTIME_ERROR, &e.to_string()),
    }
}

/// Prints one line on stderr and returns `code`.
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
