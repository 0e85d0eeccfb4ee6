//! The log writer: request threads append finished lines to a shared buffer; one thread
//! writes the buffer to the sink in batches, gathered for at most [`FLUSH_INTERVAL`] or
//! until [`BATCH_BYTES`] are waiting.
//!
//! Why not a channel per line (`tracing-appender`'s non-blocking writer, used before):
//! each line was copied into its own allocation, sent through a channel and woke the
//! writer thread, which flushed whenever the channel ran dry: at ~30k lines/s that was one
//! `write` per ~6 lines and the channel's receive loop spun in `sched_yield` (0.35 s of
//! every 3 s under `strace`), on the same two cores as the requests. Here a line costs one
//! uncontended lock and a copy into a reused buffer, the writer wakes once per batch, and
//! an idle service never wakes it. Lines are never dropped: past [`MAX_BUFFER_BYTES`] a
//! request waits for the writer, as it did when the channel was full.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Longest a line waits before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes that start a write before the interval is over.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Bytes buffered before a logging thread waits for the writer (never dropped).
pub const MAX_BUFFER_BYTES: usize = 8 * 1024 * 1024;

struct State {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: the first line of a batch, a full batch, or close.
    work: Condvar,
    /// Wakes logging threads waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes in a buffer: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` of the log layer; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes what is buffered and stops the writer thread when dropped.
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchWriter {
    /// Starts the writer thread (named `thread_name`) writing to `sink`.
    pub fn spawn(
        sink: impl Write + Send + 'static,
        thread_name: &str,
    ) -> std::io::Result<(Self, WriterGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(BATCH_BYTES),
                closed: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || write_batches(&for_thread, sink))?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            WriterGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn append(&self, line: &[u8]) {
        let mut st = self.shared.lock();
        while st.buf.len() >= MAX_BUFFER_BYTES && !st.closed {
            st = self
                .shared
                .room
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = st.buf.is_empty();
        st.buf.extend_from_slice(line);
        let full = st.buf.len() >= BATCH_BYTES && st.buf.len() - line.len() < BATCH_BYTES;
        drop(st);
        if was_empty || full {
            self.shared.work.notify_one();
        }
    }
}

/// The writer thread: waits for a first line, gathers for up to [`FLUSH_INTERVAL`] (or
/// until a batch is full), then writes everything buffered in one go.
fn write_batches(shared: &Shared, mut sink: impl Write) {
    let mut spare = Vec::with_capacity(BATCH_BYTES);
    loop {
        let mut st = shared.lock();
        while st.buf.is_empty() && !st.closed {
            st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        let deadline = Instant::now() + FLUSH_INTERVAL;
        while st.buf.len() < BATCH_BYTES && !st.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = shared
                .work
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let closed = st.closed;
        std::mem::swap(&mut st.buf, &mut spare);
        drop(st);
        shared.room.notify_all();
        // Nowhere to report a failed log write but the log itself: the bytes are dropped.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        if spare.capacity() > 4 * BATCH_BYTES {
            // Give back what a burst grew.
            spare = Vec::with_capacity(BATCH_BYTES);
        }
        if closed && shared.lock().buf.is_empty() {
            return;
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's writer: the log layer formats a line and writes it whole.
pub struct LineWriter<'a> {
    writer: &'a BatchWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.append(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.writer.append(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write call.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &BatchWriter, text: &str) {
        use tracing_subscriber::fmt::MakeWriter as _;
        w.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_in_order_and_whole_and_a_burst_is_few_writes() {
        let sink = Recorder::default();
        let (w, guard) = BatchWriter::spawn(sink.clone(), "log-writer-test").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        line(&w, &format!("thread {t} line {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let writes = sink.0.lock().unwrap();
        let all: Vec<u8> = writes.concat();
        let text = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000, "every line, none dropped");
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..5_000).collect::<Vec<_>>(), "thread {t}'s order");
        }
        // ~400 KiB of lines: batched, not a write per line.
        assert!(writes.len() < 1_000, "{} writes", writes.len());
    }

    #[test]
    fn a_lone_line_is_written_within_the_interval_without_a_close() {
        let sink = Recorder::default();
        let (w, _guard) = BatchWriter::spawn(sink.clone(), "log-writer-test").unwrap();
        line(&w, "one\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().unwrap().concat(), b"one\n");
    }

    #[test]
    fn a_slow_sink_makes_loggers_wait_instead_of_dropping_lines() {
        /// Takes 2 ms per write.
        #[derive(Clone, Default)]
        struct Slow(Arc<Mutex<usize>>);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(2));
                *self.0.lock().unwrap() += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Slow::default();
        let (w, guard) = BatchWriter::spawn(sink.clone(), "log-writer-test").unwrap();
        let big = "x".repeat(1023) + "\n";
        // 24 MiB through a buffer of 8 MiB.
        for _ in 0..24 * 1024 {
            line(&w, &big);
        }
        drop(guard);
        assert_eq!(*sink.0.lock().unwrap(), 24 * 1024 * 1024);
    }
}
