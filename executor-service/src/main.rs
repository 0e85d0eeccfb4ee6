//! `executor-service`: parses configuration, sets up logging and metrics, and serves.

use clap::Parser;
use executor_service::config::Args;
use service_kit::Shutdown;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap adds a usage hint on further lines; keep the one line that names the flag.
            let rendered = e.render().to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or_default().trim_end());
            return ExitCode::from(2);
        }
    };
    service_kit::tls::install_crypto_provider();
    deny_same_user_inspection();
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
            config
                .router_addr
                .as_deref()
                .map_or("disabled".into(), service_kit::redact::url)
        );
        return ExitCode::SUCCESS;
    }
    let telemetry = match service_kit::telemetry::init("executor-service", &args.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = if args.rebuild_indexes {
        rebuild_indexes(&config).await
    } else {
        run(args, config, metrics).await
    };
    telemetry.shutdown();
    code
}

/// `--rebuild-indexes`: one pass over the task keys, then exit.
async fn rebuild_indexes(config: &executor_service::config::ExecutorConfig) -> ExitCode {
    let engine = match executor_service::build_engine(config, Shutdown::new()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match engine.store().rebuild_indexes().await {
        Ok(n) => {
            println!("indexes rebuilt: {n} tasks");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: rebuilding the indexes failed: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Makes this process non-dumpable: its `/proc/<pid>/environ`, memory and file
/// descriptors are then out of reach of other processes of the same user, such as a
/// command agent, which would otherwise read `REDIS_URL` and tokens from there. Also
/// disables core dumps, which would hold task descriptions. Children are unaffected
/// (exec resets the flag).
fn deny_same_user_inspection() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}
