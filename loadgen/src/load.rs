//! The closed-loop client: `concurrency` tasks, each sending its next request as soon as
//! the previous one answers, over `connections` HTTP/2 connections, with latencies in an
//! HDR histogram (microseconds).

use super::{ms, ratio, round};
use crate::error::{Error, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use service_kit::status_text::{code_name, one_line};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Largest latency the histogram tracks exactly; slower requests count as this much.
const MAX_TRACKED_US: u64 = 120_000_000;

/// When a phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long (requests in flight then still finish and count).
    For(Duration),
    /// After this many requests.
    Count(u64),
}

/// How to load a target.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    pub connections: usize,
    /// When the measured phase ends.
    pub stop: Stop,
    /// Unrecorded load before the measured phase.
    pub warmup: Duration,
    /// Deadline of one request.
    pub timeout: Duration,
}

impl Plan {
    /// The plan as JSON (the `config` of a report).
    pub fn json(&self) -> Value {
        let (duration, requests) = match self.stop {
            Stop::For(d) => (Some(d.as_secs_f64()), None),
            Stop::Count(n) => (None, Some(n)),
        };
        json!({
            "concurrency": self.concurrency,
            "connections": self.connections,
            "duration_s": duration,
            "requests": requests,
            "warmup_s": self.warmup.as_secs_f64(),
            "request_timeout_s": self.timeout.as_secs_f64(),
        })
    }

    /// One line describing the plan, for the text report.
    pub fn line(&self) -> String {
        let what = match self.stop {
            Stop::For(d) => format!("for {}", humantime::format_duration(d)),
            Stop::Count(n) => format!("{n} requests"),
        };
        format!(
            "concurrency {} over {} connection(s), {what} after {} warm-up",
            self.concurrency,
            self.connections,
            humantime::format_duration(self.warmup)
        )
    }
}

/// A small, fast generator for ids and the task mix (statistical quality is not needed).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next value (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the load generator sends.
pub trait Workload: Send + Sync + 'static {
    /// The client one worker uses.
    type Client: Send + 'static;
    /// Names of the outcomes [`call`](Self::call) reports by index (e.g. decisions).
    fn outcomes(&self) -> &'static [&'static str];
    /// A client on `channel`.
    fn client(&self, channel: Channel) -> Self::Client;
    /// Sends one request; the index of its outcome in [`outcomes`](Self::outcomes).
    fn call(
        &self,
        client: &mut Self::Client,
        rng: &mut Rng,
    ) -> impl Future<Output = std::result::Result<usize, tonic::Status>> + Send;
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Requests recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Slowest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl LatencySummary {
    /// The percentiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// As JSON, in microseconds.
    pub fn json(&self) -> Value {
        json!({
            "p50_us": self.p50,
            "p90_us": self.p90,
            "p99_us": self.p99,
            "max_us": self.max,
            "mean_us": round(self.mean, 1),
        })
    }

    /// `p50 p90 p99 max` in milliseconds, for the text tables.
    pub fn cells(&self) -> [String; 4] {
        [ms(self.p50), ms(self.p90), ms(self.p99), ms(self.max)]
    }
}

/// A latency histogram in microseconds covering 1 µs to two minutes at 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
        .map_err(|e| Error::Runtime(format!("latency histogram: {e}")))
}

/// Records `elapsed` in `h`, in whole microseconds (at least 1).
pub fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    h.saturating_record(us);
}

/// The result of one measured phase.
#[derive(Debug)]
pub struct Measured {
    /// Requests that answered OK.
    pub ok: u64,
    /// Requests that failed (any status, or no answer within the deadline).
    pub errors: u64,
    /// Failures by gRPC code name.
    pub error_codes: BTreeMap<String, u64>,
    /// The first failure, as one line.
    pub first_error: Option<String>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of the successful requests.
    pub latency: LatencySummary,
    /// Successful requests per outcome name.
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl Measured {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        ratio(self.ok as f64, self.elapsed.as_secs_f64())
    }

    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "requests": self.ok + self.errors,
            "ok": self.ok,
            "errors": self.errors,
            "error_codes": self.error_codes,
            "first_error": self.first_error,
            "elapsed_s": round(self.elapsed.as_secs_f64(), 4),
            "throughput_rps": round(self.throughput(), 1),
            "latency": self.latency.json(),
            "outcomes": self.outcomes,
        })
    }

    /// One row of the text table: name, requests, errors, req/s, p50, p90, p99, max.
    pub fn row(&self, name: &str) -> Vec<String> {
        let mut row = vec![
            name.to_string(),
            (self.ok + self.errors).to_string(),
            self.errors.to_string(),
            format!("{:.1}", self.throughput()),
        ];
        row.extend(self.latency.cells());
        row
    }
}

/// Header of the table [`Measured::row`] fills.
pub const TABLE_HEADER: [&str; 8] = [
    "", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
];

/// Renders rows as an aligned text table (first column left, the rest right-aligned).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("  {c:>w$}"));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Opens `n` separate HTTP/2 connections to `url` (each channel is one connection).
pub async fn connect_all(url: &str, n: usize, timeout: Duration) -> Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| Error::Usage(format!("{url:?} is not a valid address")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let cause = service_kit::status_text::io_cause(&e)
                    .unwrap_or_else(|| one_line(&e.to_string()));
                return Err(Error::Runtime(format!("cannot reach {url}: {cause}")));
            }
            Err(_) => {
                return Err(Error::Runtime(format!(
                    "cannot reach {url}: no connection within {}",
                    humantime::format_duration(timeout)
                )));
            }
        };
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs the warm-up (unrecorded) and then the measured phase of `plan` against `channels`.
pub async fn drive<W: Workload>(
    workload: Arc<W>,
    channels: &[Channel],
    plan: &Plan,
) -> Result<Measured> {
    if !plan.warmup.is_zero() {
        phase(workload.clone(), channels, plan, Stop::For(plan.warmup)).await?;
    }
    phase(workload, channels, plan, plan.stop).await
}

/// What one worker counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    error_codes: BTreeMap<String, u64>,
    first_error: Option<String>,
    outcomes: Vec<u64>,
}

async fn phase<W: Workload>(
    workload: Arc<W>,
    channels: &[Channel],
    plan: &Plan,
    stop: Stop,
) -> Result<Measured> {
    if channels.is_empty() {
        return Err(Error::Runtime("no connection to send requests on".into()));
    }
    // One shared histogram: a per-worker one would cost ~200 KiB per in-flight request,
    // and recording holds the lock for nanoseconds next to a round trip of tens of µs.
    let hist = Arc::new(Mutex::new(histogram()?));
    let tickets = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = match stop {
        Stop::For(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let limit = match stop {
        Stop::Count(n) => n,
        Stop::For(_) => u64::MAX,
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut set = tokio::task::JoinSet::new();
    for n in 0..plan.concurrency {
        let workload = workload.clone();
        let mut client = workload.client(channels[n % channels.len()].clone());
        let hist = hist.clone();
        let tickets = tickets.clone();
        let timeout = plan.timeout;
        let mut rng = Rng::new(seed ^ (n as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        set.spawn(async move {
            let mut tally = Tally {
                outcomes: vec![0; workload.outcomes().len()],
                ..Tally::default()
            };
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || tickets.fetch_add(1, Ordering::Relaxed) >= limit
                {
                    break;
                }
                let t0 = Instant::now();
                let answer = tokio::time::timeout(timeout, workload.call(&mut client, &mut rng))
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded(format!(
                            "no answer within {}",
                            humantime::format_duration(timeout)
                        )))
                    });
                let elapsed = t0.elapsed();
                match answer {
                    Ok(outcome) => {
                        tally.ok += 1;
                        if let Some(c) = tally.outcomes.get_mut(outcome) {
                            *c += 1;
                        }
                        let mut h = hist.lock().unwrap_or_else(|e| e.into_inner());
                        record(&mut h, elapsed);
                    }
                    Err(status) => {
                        tally.errors += 1;
                        *tally
                            .error_codes
                            .entry(code_name(status.code()).to_string())
                            .or_default() += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(format!(
                                "{}: {}",
                                code_name(status.code()),
                                one_line(status.message())
                            ));
                        }
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally {
        outcomes: vec![0; workload.outcomes().len()],
        ..Tally::default()
    };
    while let Some(joined) = set.join_next().await {
        let t = joined.map_err(|e| Error::Runtime(format!("a load worker failed: {e}")))?;
        total.ok += t.ok;
        total.errors += t.errors;
        for (code, n) in t.error_codes {
            *total.error_codes.entry(code).or_default() += n;
        }
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
        for (sum, n) in total.outcomes.iter_mut().zip(t.outcomes) {
            *sum += n;
        }
    }
    let elapsed = started.elapsed();
    let latency = LatencySummary::of(&hist.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Measured {
        ok: total.ok,
        errors: total.errors,
        error_codes: total.error_codes,
        first_error: total.first_error,
        elapsed,
        latency,
        outcomes: workload
            .outcomes()
            .iter()
            .copied()
            .zip(total.outcomes)
            .filter(|(_, n)| *n > 0)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_in_microseconds() {
        let mut h = histogram().unwrap();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert!(s.p50 >= 499 && s.p50 <= 501, "{s:?}");
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max, "{s:?}");
        assert!(s.max >= 1000 && s.max <= 1001, "{s:?}");
    }

    #[test]
    fn an_empty_histogram_is_all_zero() {
        assert_eq!(
            LatencySummary::of(&histogram().unwrap()),
            LatencySummary::default()
        );
    }

    #[test]
    fn slow_requests_saturate_instead_of_failing() {
        let mut h = histogram().unwrap();
        record(&mut h, Duration::from_secs(3600));
        assert!(LatencySummary::of(&h).max >= MAX_TRACKED_US);
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["", "a", "bb"],
            &[vec!["x".into(), "1".into(), "22".into()]],
        );
        assert_eq!(t, "   a  bb\nx  1  22\n");
    }
}
