//! A WebSocket client written byte by byte, for what no well-behaved library sends: frames
//! with lying headers, reserved bits, invalid UTF-8, unmasked data, floods, and clients
//! that never read (from any loopback address, with a tiny receive buffer).

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpSocket,
    },
};

pub const PATIENCE: Duration = Duration::from_secs(30);

/// How to open the connection.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// Extra request headers, `("origin", "http://evil.example")` say.
    pub headers: Vec<(String, String)>,
    /// Connect from this loopback address (any of 127.0.0.0/8 works on Linux).
    pub from: Option<std::net::IpAddr>,
    /// A receive buffer this small makes a client that stops reading back up at once.
    pub receive_buffer: Option<u32>,
}

impl Handshake {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn from(mut self, address: &str) -> Self {
        self.from = Some(address.parse().expect("an IP address"));
        self
    }

    pub fn small_buffer(mut self) -> Self {
        self.receive_buffer = Some(4096);
        self
    }
}

/// The server's answer to a handshake it refused.
#[derive(Debug)]
pub struct RawRefusal {
    pub status: u16,
    pub body: Value,
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Text(String),
    Ping,
    Pong,
    Close(Option<(u16, String)>),
    Other(u8),
}

pub struct RawWs {
    reader: RawWsReader,
    writer: OwnedWriteHalf,
}

/// The reading side of a connection, for a test that reads and writes at once.
pub struct RawWsReader {
    read: OwnedReadHalf,
    unread: Vec<u8>,
}

impl RawWs {
    /// Connects to `address` (`127.0.0.1:port`) and sends the handshake.
    pub async fn open(address: SocketAddr, handshake: Handshake) -> Result<Self, RawRefusal> {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = handshake.receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        if let Some(from) = handshake.from {
            socket.bind(SocketAddr::new(from, 0)).unwrap();
        }
        let stream = socket.connect(address).await.expect("connect");
        let (read, mut writer) = stream.into_split();
        let mut request = format!(
            "GET /api/v1/ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in &handshake.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        writer.write_all(request.as_bytes()).await.unwrap();
        let mut reader = RawWsReader { read, unread: Vec::new() };
        let head = reader.read_head().await;
        let status: u16 = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
        if status == 101 {
            return Ok(Self { reader, writer });
        }
        let length = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(0);
        let body = reader.read_exact_bytes(length).await;
        Err(RawRefusal { status, body: serde_json::from_slice(&body).unwrap_or(Value::Null) })
    }

    /// Opens with `early` bytes sent right behind the handshake, before its answer.
    pub async fn open_with_early(address: SocketAddr, early: &[u8]) -> Result<Self, RawRefusal> {
        let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let (read, mut writer) = stream.into_split();
        let request = format!(
            "GET /api/v1/ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(early);
        writer.write_all(&bytes).await.unwrap();
        let mut reader = RawWsReader { read, unread: Vec::new() };
        let head = reader.read_head().await;
        let status: u16 = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
        if status == 101 {
            Ok(Self { reader, writer })
        } else {
            Err(RawRefusal { status, body: Value::Null })
        }
    }

    /// The two sides apart, to read and write at once.
    pub fn split(self) -> (RawWsReader, OwnedWriteHalf) {
        (self.reader, self.writer)
    }

    /// Sends raw bytes; false once the server has closed the connection.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok()
    }

    pub async fn send_text(&mut self, text: &str) -> bool {
        self.send_raw(&Self::frame(0x81, text.as_bytes())).await
    }

    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        self.reader.next_frame().await
    }

    pub async fn next_json(&mut self) -> Value {
        self.reader.next_json().await
    }

    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        self.reader.close_frame().await
    }

    pub async fn ended(&mut self) -> bool {
        self.reader.ended().await
    }

    /// A masked frame (as clients must send) with the given first byte (FIN, RSV, opcode).
    pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        match payload.len() {
            short @ 0..=125 => frame.push(0x80 | short as u8),
            medium @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(medium as u16).to_be_bytes());
            }
            long => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(long as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
        frame
    }
}

impl RawWsReader {
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(PATIENCE, self.read.read(&mut chunk)).await.expect("the server answers in time") {
            Ok(0) | Err(_) => false,
            Ok(read) => {
                self.unread.extend_from_slice(&chunk[..read]);
                true
            }
        }
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.unread.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.unread[..end]).into_owned();
                self.unread.drain(..end + 4);
                return head;
            }
            assert!(self.fill().await, "the connection closed before the handshake answer");
        }
    }

    async fn read_exact_bytes(&mut self, length: usize) -> Vec<u8> {
        while self.unread.len() < length {
            if !self.fill().await {
                break;
            }
        }
        let length = length.min(self.unread.len());
        self.unread.drain(..length).collect()
    }

    /// The next frame, or `None` when the server closed the connection without one.
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.unread) {
                self.unread.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next text message parsed as JSON (pings skipped).
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame().await.expect("a message") {
                ServerFrame::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                ServerFrame::Ping | ServerFrame::Pong => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame: its code and reason (`None`: no close frame).
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match self.next_frame().await? {
                ServerFrame::Close(close) => return close,
                _ => continue,
            }
        }
    }

    /// Whether the server closed the TCP connection (reads to its end).
    pub async fn ended(&mut self) -> bool {
        while self.fill().await {
            self.unread.clear();
        }
        true
    }
}

/// One unmasked server frame at the start of `bytes`, and how many bytes it took.
fn parse_server_frame(bytes: &[u8]) -> Option<(ServerFrame, usize)> {
    let [first, second, ..] = *bytes else { return None };
    assert_eq!(second & 0x80, 0, "server frames are never masked");
    let (length, offset) = match second & 0x7F {
        126 => (u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize, 10),
        short => (short as usize, 2),
    };
    let payload = bytes.get(offset..offset + length)?;
    let frame = match first & 0x0F {
        0x1 => ServerFrame::Text(String::from_utf8(payload.to_vec()).expect("server text is UTF-8")),
        0x8 => ServerFrame::Close(match payload {
            [high, low, reason @ ..] => {
                Some((u16::from_be_bytes([*high, *low]), String::from_utf8_lossy(reason).into_owned()))
            }
            _ => None,
        }),
        0x9 => ServerFrame::Ping,
        0xA => ServerFrame::Pong,
        other => ServerFrame::Other(other),
    };
    assert_eq!(first & 0x80, 0x80, "the server sends whole messages");
    Some((frame, offset + length))
}
