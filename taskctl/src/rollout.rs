//! `taskctl rollout status|pause|resume|abort`: reads the rollout controller's record in
//! Redis and leaves operator requests for it.

use crate::cli::{Cli, RecordsArgs, RolloutAction, RolloutArgs};
use crate::error::{CliError, Exit, Result};
use crate::output::{emit, emit_json};
use rollout_controller::state::{Event, Request, RolloutState, RolloutStore};
use serde_json::json;
use std::time::{Duration, UNIX_EPOCH};

/// Runs one `rollout` subcommand.
pub async fn run(cli: &Cli, args: &RolloutArgs) -> Result<Exit> {
    let store = store(&args.records)?;
    let state = store
        .load()
        .await
        .map_err(|e| redis_err(&args.records, e))?;
    match args.action {
        RolloutAction::Status { events } => {
            let history = store
                .events(events)
                .await
                .map_err(|e| redis_err(&args.records, e))?;
            let pending = store
                .pending()
                .await
                .map_err(|e| redis_err(&args.records, e))?;
            if cli.json {
                emit_json(&json!({
                    "state": state,
                    "pending_request": pending.map(Request::name),
                    "events": history,
                }));
            } else {
                emit(&status_text(state.as_ref(), pending, &history));
            }
            Ok(Exit::Ok)
        }
        action => {
            let request = match action {
                RolloutAction::Pause => Request::Pause,
                RolloutAction::Resume => Request::Resume,
                _ => Request::Abort,
            };
            let Some(state) = state.filter(|s| s.status.is_active()) else {
                return Err(CliError::Usage(format!(
                    "no active rollout to {}",
                    request.name()
                )));
            };
            store
                .request(request)
                .await
                .map_err(|e| redis_err(&args.records, e))?;
            if cli.json {
                emit_json(&json!({"rollout": state.id, "requested": request.name()}));
            } else {
                emit(&format!(
                    "{} requested for {}; the controller applies it at its next check\n",
                    request.name(),
                    state.id
                ));
            }
            Ok(Exit::Ok)
        }
    }
}

/// The rollout record behind `args`.
pub fn store(args: &RecordsArgs) -> Result<RolloutStore> {
    Ok(RolloutStore::new(connect(args)?, &args.key_prefix))
}

/// A lazy connection to the records' Redis; the error names the flag.
pub fn connect(args: &RecordsArgs) -> Result<redis::aio::ConnectionManager> {
    executor_service::session::redis_store::connect_lazy(&args.redis_url).map_err(|e| {
        CliError::Usage(format!(
            "--redis-url / REDIS_URL {}: {}",
            service_kit::redact::url(&args.redis_url),
            service_kit::status_text::one_line(&e.to_string())
        ))
    })
}

/// A Redis failure, naming the (redacted) URL.
pub fn redis_err(args: &RecordsArgs, e: rollout_controller::Error) -> CliError {
    CliError::Runtime(format!(
        "redis at {}: {}",
        service_kit::redact::url(&args.redis_url),
        service_kit::status_text::one_line(&e.to_string())
    ))
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn status_text(state: Option<&RolloutState>, pending: Option<Request>, events: &[Event]) -> String {
    let Some(s) = state else {
        return "no rollout recorded\n".to_string();
    };
    let mut out = format!(
        "rollout {}: {} at {} % (step {}/{} of {:?}), policy {}\n",
        s.id,
        s.status,
        s.percent,
        s.step_index + 1,
        s.steps.len(),
        s.steps,
        s.policy_version
    );
    out.push_str(&format!("step started: {}\n", when(s.step_started_at_ms)));
    let g = &s.gates;
    out.push_str(&format!(
        "gates: success drop <= {} points, fallback rate <= {}, cost per completed <= ${}, median duration <= {}x single, over >= {} finished team tasks\n",
        g.max_success_drop_points,
        g.max_fallback_rate,
        g.max_cost_per_completed_usd,
        g.max_duration_ratio,
        g.min_finished
    ));
    if !s.reason.is_empty() {
        out.push_str(&format!("reason: {}\n", s.reason));
    }
    if let Some(p) = pending {
        out.push_str(&format!("pending request: {}\n", p.name()));
    }
    out.push_str("history:\n");
    for e in events {
        out.push_str(&format!(
            "  {}  {:<9} {:>3} %  policy {}",
            when(e.at_ms),
            e.kind.name(),
            e.percent,
            e.policy_version
        ));
        if let Some(g) = &e.gate {
            out.push_str(&format!("  gate {g}"));
        }
        if !e.reason.is_empty() {
            out.push_str(&format!("  ({})", e.reason));
        }
        out.push('\n');
    }
    out
}
