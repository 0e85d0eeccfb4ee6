//! Policy evaluation cost for short, 100 KiB and 1 MiB descriptions.
//!
//! `1MiB_prose` is ordinary text. The other long descriptions contain no keyword but many near misses ("phishing",
//! "redeployable", "productive"), so every byte is scanned and every candidate match goes
//! through the whole-word check: the worst case for a task that stays single.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use router_service::PolicyEngine;
use std::hint::black_box;
use taskrouter_proto::v1::{Complexity, Task};

/// Ordinary engineering prose: no keyword and few near misses.
const PROSE: &str = "The parser currently allocates a new buffer for every token, which shows up in \
profiles of large inputs. Reuse one buffer per file, add a regression test for nested blocks, \
and update the changelog. Keep the public API unchanged and document the new option. ";

const FILLER: &str = "Refactor the parser module, update the docs, avoid phishing-prone links, \
keep the widget redeployable and the team productive; graphical output stays unchanged. ";

fn description(bytes: usize) -> String {
    repeat(FILLER, bytes)
}

fn repeat(unit: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + unit.len());
    while s.len() < bytes {
        s.push_str(unit);
    }
    s.truncate(bytes);
    s
}

fn task(description: String) -> Task {
    Task {
        id: "BENCH-1".into(),
        description,
        complexity: Complexity::Medium as i32,
        estimated_value_usd: 50.0,
        repositories: vec!["org/service-a".into()],
        labels: Default::default(),
    }
}

fn evaluate(c: &mut Criterion) {
    let engine = match PolicyEngine::builtin() {
        Ok(e) => e,
        Err(e) => panic!("builtin policy: {e}"),
    };
    let mut group = c.benchmark_group("evaluate");
    let cases = [
        (
            "short",
            task("Rotate HIPAA credentials for the patient portal".into()),
        ),
        ("100KiB", task(description(100 * 1024))),
        ("1MiB", task(description(1024 * 1024))),
        ("1MiB_prose", task(repeat(PROSE, 1024 * 1024))),
    ];
    for (name, t) in &cases {
        group.throughput(Throughput::Bytes(t.description.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), t, |b, t| {
            b.iter(|| engine.evaluate(black_box(t)));
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
