//! One WebSocket connection's bytes, after the handshake: frames read straight from the
//! socket into at most one frame's worth of memory, and frames to send queued as shared
//! buffers until the socket takes them. Nothing is held while the connection is idle, and
//! what is held is counted in `storefront_ws_buffered_bytes`.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use prometheus::IntGauge;
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

use crate::websocket::{Incoming, MessageReader, Violation, MAX_PENDING_BYTES};

/// Why reading from the client stopped.
#[derive(Debug)]
pub enum ReadEnd {
    /// The client closed its side.
    Eof,
    Violation(Violation),
    Io(io::Error),
}

/// How many queued frames one vectored write hands the kernel.
const WRITE_BATCH: usize = 32;
/// Queued bytes, or queued frames, at which a connection is backed up: it takes no more
/// live events and reads nothing more from its client until the socket catches up.
pub const HIGH_WATER_BYTES: usize = 32 * 1024;
pub const HIGH_WATER_FRAMES: usize = 256;
/// What a queued frame costs besides its bytes (its queue slot and buffer header),
/// counted in the gauge so that many tiny frames show as what they cost.
const FRAME_OVERHEAD: usize = 64;
/// The most read (and dropped) from a client after the server said goodbye.
const LINGER_READ_LIMIT: usize = 64 * 1024;
/// Queue slots kept across bursts; a connection that queued more gives the rest back.
const KEPT_QUEUE_SLOTS: usize = 8;

pub struct WsSocket {
    io: TcpStream,
    reader: MessageReader,
    /// Whole frames to send, oldest first; the first may be partly written.
    out: VecDeque<Bytes>,
    front_written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
    /// What this connection adds to the buffered-bytes gauge now.
    counted: i64,
    gauge: IntGauge,
    /// Since when the socket, full, has taken nothing (`None` while it keeps up).
    blocked_since: Option<Instant>,
    read_closed: bool,
}

impl WsSocket {
    /// Takes over a connection; `early` is what the client sent after its handshake.
    pub fn new(io: TcpStream, early: &[u8], gauge: IntGauge) -> Self {
        let mut reader = MessageReader::default();
        if !early.is_empty() {
            reader.push(early);
        }
        let mut socket = Self {
            io,
            reader,
            out: VecDeque::new(),
            front_written: 0,
            queued: 0,
            counted: 0,
            gauge,
            blocked_since: None,
            read_closed: false,
        };
        socket.recount();
        socket
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the socket has as much waiting as a connection may hold.
    pub fn backed_up(&self) -> bool {
        self.queued >= HIGH_WATER_BYTES || self.out.len() >= HIGH_WATER_FRAMES
    }

    /// Since when a full socket has taken nothing while bytes wait.
    pub fn blocked_since(&self) -> Option<Instant> {
        self.blocked_since
    }

    /// Queues a whole frame; `try_flush` or `poll_flush` hands it to the socket.
    pub fn send(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.out.push_back(frame);
        self.recount();
    }

    /// Drops every frame not yet begun (a partly written one must still finish, or the
    /// stream would be corrupt): for a close that should not wait behind them.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.front_written > 0);
        while self.out.len() > keep {
            if let Some(frame) = self.out.pop_back() {
                self.queued -= frame.len();
            }
        }
        self.recount();
    }

    /// Writes what is queued until the socket is full (`Pending`) or the queue is empty.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.try_flush()?;
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // Registers for the moment the socket has room again.
            ready!(self.io.poll_write_ready(cx))?;
        }
    }

    /// Writes what the socket takes now, without waiting.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
            let mut count = 0;
            for (index, frame) in self.out.iter().take(WRITE_BATCH).enumerate() {
                let start = if index == 0 { self.front_written } else { 0 };
                slices[index] = IoSlice::new(&frame[start..]);
                count += 1;
            }
            match self.io.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        // Progress: a socket that still cannot take everything is blocked from now.
        self.blocked_since = None;
        while written > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                break;
            }
            written -= left;
            self.front_written = 0;
            self.out.pop_front();
        }
        if self.out.is_empty() && self.out.capacity() > KEPT_QUEUE_SLOTS {
            self.out = VecDeque::new();
        }
        self.recount();
    }

    /// The client's next message. Reads only when no complete one is held, and never more
    /// than one frame's worth.
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, ReadEnd>> {
        loop {
            match self.reader.next_message() {
                Ok(Some(message)) => {
                    self.recount();
                    return Poll::Ready(Ok(message));
                }
                Ok(None) => {}
                Err(violation) => return Poll::Ready(Err(ReadEnd::Violation(violation))),
            }
            if self.read_closed {
                return Poll::Ready(Err(ReadEnd::Eof));
            }
            if let Err(error) = ready!(self.io.poll_read_ready(cx)) {
                return Poll::Ready(Err(ReadEnd::Io(error)));
            }
            // On the stack for this poll only: an idle connection keeps no read buffer.
            let mut chunk = [0u8; MAX_PENDING_BYTES];
            let room = self.reader.room().min(chunk.len());
            match self.io.try_read(&mut chunk[..room]) {
                Ok(0) => self.read_closed = true,
                Ok(read) => {
                    self.reader.push(&chunk[..read]);
                    self.recount();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(ReadEnd::Io(error))),
            }
        }
    }

    /// Keeps the gauge equal to what this connection holds.
    fn recount(&mut self) {
        let held = self.queued + self.out.len() * FRAME_OVERHEAD + self.reader.buffered();
        let now = i64::try_from(held).unwrap_or(i64::MAX);
        if now != self.counted {
            self.gauge.add(now - self.counted);
            self.counted = now;
        }
    }

    /// Ends the connection: whatever is queued gets until `deadline` to be written (a close
    /// frame, usually), then the socket is shut down and, per RFC 6455 §7.1.1, the client
    /// gets until then to close its side. What it sends meanwhile is read and dropped up to
    /// `LINGER_READ_LIMIT` (a client streaming a refused frame is not read to its end);
    /// past that, nothing more is read, but the socket is kept until the deadline, so the
    /// client can still read the close frame (a socket closed with unread data resets the
    /// connection, and the reset can discard what the client had not read yet).
    pub async fn finish(&mut self, deadline: Instant) {
        let flushed = tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| self.poll_flush(cx))).await;
        if matches!(flushed, Ok(Ok(()))) {
            let _ = tokio::time::timeout_at(deadline, self.io.shutdown()).await;
            let _ = tokio::time::timeout_at(deadline, async {
                if !self.read_until_closed().await {
                    std::future::pending::<()>().await;
                }
            })
            .await;
        }
    }

    /// Reads and drops what the client still sends; true once it closed, false when it
    /// sent too much first.
    async fn read_until_closed(&mut self) -> bool {
        let mut left = LINGER_READ_LIMIT;
        while left > 0 {
            if self.io.readable().await.is_err() {
                return true;
            }
            match drop_available(&self.io) {
                Ok(0) => return true,
                Ok(read) => left = left.saturating_sub(read),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// Reads and drops what the socket holds now (its buffer on the stack of this call only).
fn drop_available(io: &TcpStream) -> io::Result<usize> {
    let mut sink = [0u8; 1024];
    io.try_read(&mut sink)
}

impl Drop for WsSocket {
    fn drop(&mut self) {
        self.gauge.sub(self.counted);
    }
}
