//! Bad input below the message level: arbitrary bytes as request bodies, messages above
//! the size limit, garbage on the gRPC port, and overload.

mod chaos_support;
mod common;
mod inproc;

use bytes::{Buf, BufMut};
use inproc::env;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use taskrouter_proto::v1::{Complexity, RouteRequest, RunRequest, SubmitRequest, Task};
use test_support::client::{task, wait_final};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

/// Sends and receives raw message bytes, so a request can be anything at all.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n).to_vec()))
    }
}

/// Every unary method of both services, and whether it is the router's.
const UNARY: &[(&str, bool)] = &[
    ("/taskrouter.v1.Router/Route", true),
    ("/taskrouter.v1.Router/GetPolicy", true),
    ("/taskrouter.v1.Executor/Submit", false),
    ("/taskrouter.v1.Executor/Run", false),
    ("/taskrouter.v1.Executor/Get", false),
    ("/taskrouter.v1.Executor/Cancel", false),
];
const WATCH: &str = "/taskrouter.v1.Executor/Watch";

/// Calls `path` with `body` as the encoded request; the status code (OK or the error)
/// and the message.
async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return (Code::Unavailable, format!("not ready: {e}"));
    }
    let path = PathAndQuery::from_static(path);
    let result = if path.path() == WATCH {
        match grpc
            .server_streaming(tonic::Request::new(body), path, RawCodec)
            .await
        {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                    Ok(Err(s)) => Err(s),
                    _ => Ok(()),
                }
            }
            Err(s) => Err(s),
        }
    } else {
        grpc.unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// Bytes that are not a valid request, or barely are.
fn raw_body() -> impl Strategy<Value = Vec<u8>> {
    use prost::Message as _;
    let task = Task {
        id: "RAW-1".into(),
        description: "Deploy to production".into(),
        complexity: Complexity::High as i32,
        estimated_value_usd: 10.0,
        repositories: vec!["org/a".into()],
        labels: [("k".to_string(), "v".to_string())].into(),
    };
    let valid = RouteRequest {
        task: Some(task),
        ..Default::default()
    }
    .encode_to_vec();
    let mutated = {
        let valid = valid.clone();
        vec((0..valid.len(), any::<u8>()), 1..6).prop_map(move |edits| {
            let mut b = valid.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b
        })
    };
    let truncated = {
        let valid = valid.clone();
        (0..valid.len()).prop_map(move |n| valid[..n].to_vec())
    };
    prop_oneof![
        3 => vec(any::<u8>(), 0..512),
        2 => mutated,
        1 => truncated,
        // Groups nested ten thousand deep.
        1 => Just(vec![0x0b; 10_000]),
        // A length prefix claiming far more bytes than follow.
        1 => Just(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
        // Invalid UTF-8 in a string field.
        1 => Just(vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe]),
        // Unknown fields only.
        1 => vec(any::<u8>(), 0..64).prop_map(|v| {
            let mut b = vec![0xfa, 0x3e, v.len() as u8];
            b.extend(v);
            b
        }),
    ]
}

#[test]
fn arbitrary_bytes_as_any_request_get_a_status_and_never_a_hang() {
    let env = env();
    let seen: Mutex<BTreeMap<String, usize>> = Mutex::default();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let methods = prop::sample::select(
        UNARY
            .iter()
            .map(|(p, r)| (*p, *r))
            .chain([(WATCH, false)])
            .collect::<Vec<_>>(),
    );
    let result = runner.run(&(methods, raw_body()), |((path, router), body)| {
        let addr = if router {
            env.router_addr
        } else {
            env.exec_addr
        };
        let channel = {
            let _rt = env.rt.enter();
            test_support::client::lazy_channel(addr)
        };
        let (code, message) =
            env.call(path, Duration::from_secs(15), raw_call(channel, path, body));
        *seen.lock().unwrap().entry(format!("{code:?}")).or_default() += 1;
        match code {
            // Undecodable protobuf: INTERNAL, as gRPC's status-code table prescribes.
            Code::Internal => prop_assert!(
                message.starts_with("failed to decode Protobuf message"),
                "{path}: INTERNAL for something other than decoding: {message}"
            ),
            Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Aborted => {}
            other => {
                return Err(TestCaseError::fail(format!("{path}: {other:?} {message}")));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("raw bodies: {:?}", seen.lock().unwrap());
    env.a_valid_task_still_completes("AFTER-RAW-BODIES");
}

fn huge_task(id: &str, bytes: usize) -> Task {
    Task {
        id: id.into(),
        description: "x".repeat(bytes),
        complexity: Complexity::Low as i32,
        estimated_value_usd: 1.0,
        ..Default::default()
    }
}

#[test]
fn a_message_above_the_size_limit_is_resource_exhausted() {
    let env = env();
    let mut router = env.router();
    let mut executor = env.executor();
    // The router decodes up to 5 MiB, the executor up to tonic's 4 MiB default.
    let r = env.call(
        "oversize Route",
        Duration::from_secs(30),
        router.route(RouteRequest {
            task: Some(huge_task("BIG-1", 6 << 20)),
            ..Default::default()
        }),
    );
    let route = r.expect_err("a 6 MiB Route is refused");
    let r = env.call(
        "oversize Submit",
        Duration::from_secs(30),
        executor.submit(SubmitRequest {
            task: Some(huge_task("BIG-2", 5 << 20)),
            ..Default::default()
        }),
    );
    let submit = r.expect_err("a 5 MiB Submit is refused");
    for (what, s) in [("Route", &route), ("Submit", &submit)] {
        println!("{what} above the limit: {:?}: {}", s.code(), s.message());
        assert_eq!(s.code(), Code::ResourceExhausted, "{what}: {}", s.message());
    }
    // Just under the limit is a field problem, not a transport one.
    let r = env.call(
        "large Submit",
        Duration::from_secs(30),
        executor.submit(SubmitRequest {
            task: Some(huge_task("BIG-3", 3 << 20)),
            ..Default::default()
        }),
    );
    let s = r.expect_err("a 3 MiB description is over the 1 MiB field limit");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(
        service_kit::validation::field_violations(&s)[0].field,
        "task.description"
    );
    env.a_valid_task_still_completes("AFTER-OVERSIZE");
}

/// What one raw TCP client sends before it hangs up.
fn garbage_payloads(rng: &mut impl rand::Rng) -> Vec<(String, Vec<u8>)> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut out: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let n = rng.random_range(1..4096);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            (format!("{n} random bytes #{i}"), bytes)
        })
        .collect();
    let frame = |len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    out.extend([
        (
            "an HTTP/1.1 request".to_string(),
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "an HTTP/1.1 POST to a gRPC path".to_string(),
            b"POST /taskrouter.v1.Router/Route HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00".to_vec(),
        ),
        ("a truncated HTTP/2 preface".to_string(), PREFACE[..10].to_vec()),
        ("a TLS ClientHello start".to_string(), vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
        ("the preface and garbage".to_string(), {
            let mut b = PREFACE.to_vec();
            b.extend((0..256).map(|_| rng.random::<u8>()));
            b
        }),
        ("a SETTINGS frame claiming 16 MiB".to_string(), {
            let mut b = PREFACE.to_vec();
            b.extend(frame(0xff_ffff, 0x4, 0, 0, &[0; 12]));
            b
        }),
        ("HEADERS on stream 0".to_string(), {
            let mut b = PREFACE.to_vec();
            b.extend(frame(0, 0x4, 0, 0, &[]));
            b.extend(frame(4, 0x1, 0x4, 0, &[0x82, 0x86, 0x84, 0x41]));
            b
        }),
        ("DATA on a stream never opened".to_string(), {
            let mut b = PREFACE.to_vec();
            b.extend(frame(0, 0x4, 0, 0, &[]));
            b.extend(frame(5, 0x0, 0x1, 7, &[0, 0, 0, 0, 0]));
            b
        }),
    ]);
    out
}

/// Sends `bytes` on a fresh connection, reads whatever comes back for a moment, hangs up.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        panic!("{addr} refused a connection");
    };
    let _ = s.write_all(bytes).await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_crashes_neither_server() {
    use chaos_support::{EXECUTOR, ROUTER, health};
    let (mut rng, _seed) = chaos_support::seeded_rng("garbage bytes");
    let mut c = common::Cluster::start().await;
    c.add_executor("exec-a", &["--concurrency", "1"]).await;
    let targets = [(c.router_addr, ROUTER), (c.executors[0].addr, EXECUTOR)];
    let payloads = garbage_payloads(&mut rng);
    // A client that sends half a preface and then just sits there.
    let mut idle = Vec::new();
    for (addr, _) in targets {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        idle.push(s);
    }
    for (addr, service) in targets {
        for (what, bytes) in &payloads {
            send_raw(addr, bytes).await;
            assert_eq!(
                health(addr, service).await,
                Some(ServingStatus::Serving),
                "{service} after {what}"
            );
        }
    }
    assert!(
        c.router.as_mut().unwrap().try_exit_status().is_none(),
        "the router process is still running"
    );
    assert!(
        c.executors[0].process.try_exit_status().is_none(),
        "the executor process is still running"
    );
    // And real work still goes through both.
    let mut client = c.client(0).await;
    let t = task(
        "AFTER-GARBAGE",
        "Deploy the API to production",
        Complexity::Medium,
        10.0,
        &["org/api"],
        &[],
    );
    client
        .submit(SubmitRequest {
            task: Some(t),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = wait_final(&mut client, "AFTER-GARBAGE", Duration::from_secs(30)).await;
    assert_eq!(s.status, taskrouter_proto::v1::TaskStatus::Completed as i32);
    assert!(
        s.fallback.is_none(),
        "the router answered: {:?}",
        s.fallback
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_on_one_connection_is_shed_with_resource_exhausted() {
    const CALLS: usize = 12;
    let c = common::Cluster::start().await;
    let exec = chaos_support::Exec::start(
        &c,
        "exec-a",
        &[
            "--concurrency",
            "0",
            "--lease-ttl",
            "5s",
            "--shutdown-grace",
            "2s",
            "--concurrency-limit-per-connection",
            "1",
        ],
    )
    .await;
    // One HTTP/2 connection carrying every call.
    let client = exec.client();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let mut client = client.clone();
        calls.spawn(async move {
            let t = task(
                &format!("SLOW-{i}"),
                "Fix a flaky test",
                Complexity::Low,
                10.0,
                &["org/app"],
                &[("sim.iterations", "5"), ("sim.latency_ms", "100")],
            );
            let started = Instant::now();
            let r = client
                .run(RunRequest {
                    task: Some(t),
                    ..Default::default()
                })
                .await;
            (r.map(|_| ()).map_err(|s| s.code()), started.elapsed())
        });
    }
    let mut ran = Vec::new();
    let mut shed = Vec::new();
    while let Some(r) = calls.join_next().await {
        match r.unwrap() {
            (Ok(()), took) => {
                assert!(took >= Duration::from_millis(500), "a run takes 5 x 100 ms");
                ran.push(took);
            }
            (Err(Code::ResourceExhausted), took) => shed.push(took),
            (Err(other), took) => panic!("{other:?} after {took:?}: only OK or RESOURCE_EXHAUSTED"),
        }
    }
    let slowest_shed = shed.iter().max().copied().unwrap_or_default();
    let quickest_run = ran.iter().min().copied().unwrap_or_default();
    println!(
        "overload: {CALLS} concurrent Runs on one connection with a limit of 1: {} ran ({quickest_run:?}), {} shed with RESOURCE_EXHAUSTED (slowest rejection {slowest_shed:?})",
        ran.len(),
        shed.len()
    );
    assert!(!ran.is_empty(), "the call holding the slot ran");
    assert!(!shed.is_empty(), "the excess was shed, not queued");
    assert!(
        slowest_shed < quickest_run,
        "every rejection came before the slot could have freed up (no queueing)"
    );
    assert_eq!(ran.len() + shed.len(), CALLS);
}

/// What a damaged or foreign value under a task's state key can look like.
#[derive(Debug, Clone)]
enum Stored {
    /// The hash with arbitrary fields.
    Hash {
        schema: Option<Vec<u8>>,
        version: Option<Vec<u8>>,
        data: Option<Vec<u8>>,
        task: Option<Vec<u8>>,
    },
    /// A plain string where a hash belongs.
    String(Vec<u8>),
    /// A list where a hash belongs.
    List(Vec<u8>),
}

fn stored_value() -> impl Strategy<Value = Stored> {
    let field = || {
        prop::option::of(prop_oneof![
            vec(any::<u8>(), 0..64),
            Just(b"1".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"99999999999999999999999".to_vec()),
        ])
    };
    prop_oneof![
        6 => (field(), field(), field(), field()).prop_map(|(schema, version, data, task)| {
            Stored::Hash { schema, version, data, task }
        }),
        1 => vec(any::<u8>(), 0..64).prop_map(Stored::String),
        1 => vec(any::<u8>(), 1..64).prop_map(Stored::List),
    ]
}

#[test]
fn a_damaged_stored_state_is_data_loss_and_kept_never_a_crash() {
    let env = env();
    let counter = std::sync::atomic::AtomicU32::new(0);
    let seen: Mutex<BTreeMap<String, usize>> = Mutex::default();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&stored_value(), |stored| {
        let id = format!(
            "DAMAGED-{}",
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let key = format!("taskrouter:{{{id}}}:state");
        let mut client = env.executor();
        let codes = env.call("damaged state", Duration::from_secs(30), async {
            let mut conn = env.redis.connection().await;
            let cmd = match &stored {
                Stored::Hash {
                    schema,
                    version,
                    data,
                    task,
                } => {
                    let mut c = redis::cmd("HSET");
                    c.arg(&key);
                    for (name, v) in [
                        ("schema", schema),
                        ("version", version),
                        ("data", data),
                        ("task", task),
                    ] {
                        if let Some(v) = v {
                            c.arg(name).arg(v.as_slice());
                        }
                    }
                    c.arg("junk").arg("1");
                    c
                }
                Stored::String(v) => {
                    let mut c = redis::cmd("SET");
                    c.arg(&key).arg(v.as_slice());
                    c
                }
                Stored::List(v) => {
                    let mut c = redis::cmd("RPUSH");
                    c.arg(&key).arg(v.as_slice());
                    c
                }
            };
            let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
            let get = client
                .get(taskrouter_proto::v1::GetRequest {
                    task_id: id.clone(),
                    include_iterations: true,
                    iteration_limit: 10,
                })
                .await
                .map(|_| ());
            let cancel = client
                .cancel(taskrouter_proto::v1::CancelRequest {
                    task_id: id.clone(),
                })
                .await
                .map(|_| ());
            let resume = client
                .run(RunRequest {
                    task: Some(Task {
                        id: id.clone(),
                        ..Default::default()
                    }),
                    resume: true,
                    ..Default::default()
                })
                .await
                .map(|_| ());
            let kept: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            (get, cancel, resume, kept)
        });
        let (get, cancel, resume, kept) = codes;
        for (what, r) in [("Get", &get), ("Cancel", &cancel), ("Run resume", &resume)] {
            let code = r.as_ref().err().map(|s| s.code()).unwrap_or(Code::Ok);
            *seen
                .lock()
                .unwrap()
                .entry(format!("{what} {code:?}"))
                .or_default() += 1;
            prop_assert!(
                matches!(code, Code::Ok | Code::DataLoss | Code::NotFound),
                "{what} on {stored:?}: {r:?}"
            );
        }
        if get.as_ref().is_err_and(|s| s.code() == Code::DataLoss) {
            prop_assert!(kept, "the damaged value is kept for inspection");
            prop_assert!(get.unwrap_err().message().contains(&key));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("damaged states: {:?}", seen.lock().unwrap());
    env.a_valid_task_still_completes("AFTER-DAMAGED-STATES");
}
