//! `executor-service`: parses configuration, sets up logging and metrics, and serves.

use clap::Parser;
use executor_service::config::Args;
use service_kit::Shutdown;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = match service_kit::telemetry::metrics_addr(&args.telemetry.metrics_listen) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "config ok (agent {:?}, {} workers, router {})",
            args.agent.agent,
            config.settings.concurrency,
            config.router_addr.as_deref().unwrap_or("disabled")
        );
        return ExitCode::SUCCESS;
    }
    let telemetry =
        match service_kit::telemetry::init("executor-service", args.telemetry.log_format) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    let code = run(args, config, metrics).await;
    telemetry.shutdown();
    code
}

async fn run(
    args: Args,
    config: executor_service::config::ExecutorConfig,
    metrics: Option<std::net::SocketAddr>,
) -> ExitCode {
    if let Some(addr) = metrics
        && let Err(e) = service_kit::telemetry::install_prometheus(addr)
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let listen = match args.listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --listen / EXECUTOR_LISTEN: cannot bind {listen}: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    match executor_service::serve(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
