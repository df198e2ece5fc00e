//! The client's side: newline-delimited JSON-RPC on stdin and stdout.
//!
//! Each direction runs on its own OS thread with blocking I/O, so that a read that can
//! never be cancelled (stdin) does not hold up the runtime at exit, and so that every
//! message is written whole, followed by `\n`, by exactly one writer: nothing else ever
//! writes to stdout (logs go to stderr). The writer flushes whenever it has nothing more
//! queued, and keeps draining (dropping) messages if the client has closed stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Messages queued for stdout before senders wait (backpressure from a slow client).
const OUTPUT_QUEUE: usize = 1024;
/// Lines read ahead from stdin.
const INPUT_QUEUE: usize = 64;

/// Starts reading lines from `input`; the receiver yields each non-blank line without its
/// line ending and ends at EOF (or on a read error, which is logged).
pub(crate) fn spawn_reader<R: Read + Send + 'static>(
    input: R,
) -> std::io::Result<mpsc::Receiver<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    std::thread::Builder::new()
        .name("wrapper-stdin".to_owned())
        .spawn(move || {
            let mut reader = BufReader::new(input);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        warn!("reading stdin failed, treating it as closed: {e}");
                        break;
                    }
                }
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
            debug!("stdin closed");
        })?;
    Ok(rx)
}

/// A handle for writing messages to the client; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    tx: mpsc::Sender<String>,
}

impl Output {
    /// An output whose lines a test reads from `tx`'s receiver.
    #[cfg(test)]
    pub(crate) fn from_sender(tx: mpsc::Sender<String>) -> Self {
        Self { tx }
    }

    /// Queues one message as one line.
    pub(crate) async fn send(&self, message: &Value) {
        // Serializing a Value cannot fail (keys are strings); compact JSON never contains
        // a raw newline, so one message is one line.
        let line = message.to_string();
        if self.tx.send(line).await.is_err() {
            debug!("stdout writer gone; dropping a message");
        }
    }
}

/// Starts the writer thread on `output`. It ends once every [`Output`] is dropped and
/// the queue is written; join it to be sure everything was flushed.
pub(crate) fn spawn_writer<W: Write + Send + 'static>(
    output: W,
) -> std::io::Result<(Output, JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<String>(OUTPUT_QUEUE);
    let handle = std::thread::Builder::new()
        .name("wrapper-stdout".to_owned())
        .spawn(move || {
            let mut out = output;
            let mut broken = false;
            while let Some(line) = rx.blocking_recv() {
                if broken {
                    continue;
                }
                let mut result = write_line(&mut out, &line);
                while result.is_ok() {
                    match rx.try_recv() {
                        Ok(next) => result = write_line(&mut out, &next),
                        Err(_) => break,
                    }
                }
                if let Err(e) = result.and_then(|()| out.flush()) {
                    warn!("writing to stdout failed, dropping further messages: {e}");
                    broken = true;
                }
            }
        })?;
    Ok((Output { tx }, handle))
}

fn write_line(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn reader_yields_nonblank_lines_without_endings() {
        let input: &'static [u8] = b"{\"a\":1}\r\n\n   \n{\"b\":2}";
        let mut rx = spawn_reader(input).expect("thread");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn writer_writes_one_compact_line_per_message() {
        let sink = Shared::default();
        let (out, handle) = spawn_writer(sink.clone()).expect("thread");
        out.send(&json!({"text": "two\nlines", "b": 1, "a": 2}))
            .await;
        out.send(&json!({"id": 2})).await;
        drop(out);
        handle.join().expect("writer thread");
        let written = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(
            written,
            "{\"text\":\"two\\nlines\",\"b\":1,\"a\":2}\n{\"id\":2}\n"
        );
    }
}
