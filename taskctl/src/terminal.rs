//! The terminal for `taskctl top`: keys read without waiting for Enter (Ctrl-C still
//! raises SIGINT), restored when done, and the alternate screen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Switches to the alternate screen and hides the cursor.
pub const ENTER_SCREEN: &str = "\x1b[?1049h\x1b[?25l";
/// Shows the cursor and returns to the normal screen.
pub const LEAVE_SCREEN: &str = "\x1b[?25h\x1b[?1049l";

/// Reads single keys from stdin on a thread while alive; `q` asks to quit.
pub struct Keys {
    quit: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    saved: Option<libc::termios>,
}

impl Keys {
    /// Puts stdin in non-canonical, no-echo mode with a short read timeout, and starts
    /// the reader.
    pub fn start() -> Self {
        let saved = set_keys_mode();
        let quit = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (quit, stop) = (quit.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: reads at most one byte into a live one-byte buffer.
                    let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
                    if n < 0 {
                        break;
                    }
                    if n == 1 && matches!(byte[0], b'q' | b'Q') {
                        quit.notify_one();
                    }
                }
            })
        };
        Self {
            quit,
            stop,
            thread: Some(thread),
            saved,
        }
    }

    /// Resolves when `q` was pressed.
    pub async fn quit(&self) {
        self.quit.notified().await;
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The read returns within its timeout (VTIME), so this is short.
            let _ = t.join();
        }
        if let Some(saved) = self.saved {
            // SAFETY: restores the attributes read from the same descriptor.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &saved);
            }
        }
    }
}

/// Non-canonical, no echo, reads return after 0.1 s without a key; the old settings.
fn set_keys_mode() -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 1;
        if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
            return None;
        }
        Some(saved)
    }
}
