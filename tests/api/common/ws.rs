//! A real WebSocket client for the live-updates tests (tokio-tungstenite), speaking the
//! protocol of api.md: JSON text messages, close codes with reasons.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        http::{HeaderValue, Request},
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

use super::TestApp;

/// How long a test waits for a message before it fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server answered instead of upgrading.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

pub fn ws_url(app: &TestApp, query: &str) -> String {
    format!("{}/api/v1/ws{query}", app.address.replacen("http://", "ws://", 1))
}

impl WsClient {
    /// Connects with a bearer token in the `Authorization` header (or none).
    pub async fn connect(app: &TestApp, token: Option<&str>) -> Self {
        let mut request = ws_url(app, "").into_client_request().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        }
        Self::open(request).await.expect("the upgrade succeeds")
    }

    /// Connects to a server this test did not start in-process (a child process).
    pub async fn connect_url(url: &str) -> Self {
        Self::open(url.into_client_request().unwrap()).await.expect("the upgrade succeeds")
    }

    pub async fn open(request: Request<()>) -> Result<Self, Refused> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Self { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body =
                    response.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(error) => panic!("WebSocket connect failed: {error}"),
        }
    }

    /// Opens over a socket with a tiny receive buffer, so a client that stops reading
    /// backs up into the server quickly (a slow consumer without megabytes of kernel buffers).
    pub async fn connect_with_small_buffer(app: &TestApp) -> Self {
        let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(address).await.unwrap();
        let request = ws_url(app, "").into_client_request().unwrap();
        let (stream, _) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await.expect("the upgrade succeeds");
        Self { stream }
    }

    pub async fn send_json(&mut self, message: Value) {
        self.stream.send(Message::Text(message.to_string().into())).await.expect("send");
    }

    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.expect("send");
    }

    /// The next JSON text message; fails the test after `PATIENCE` or on a close.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(PATIENCE).await
    }

    /// The next JSON text message; fails the test after `patience` or on a close.
    pub async fn next_json_within(&mut self, patience: Duration) -> Value {
        loop {
            let message = tokio::time::timeout(patience, self.stream.next())
                .await
                .expect("a message within the patience")
                .expect("the connection is open")
                .expect("a well-formed frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON text"),
                Message::Close(frame) => panic!("closed unexpectedly: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads one frame of any kind (so pings get answered); JSON text comes back parsed.
    pub async fn next_json_or_ping(&mut self) -> Option<Value> {
        match self.stream.next().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str(&text).ok(),
            _ => None,
        }
    }

    /// Subscribes and returns the `subscribed` answer (after any `error` it expects none).
    pub async fn subscribe(&mut self, topics: &[&str], since: Option<i64>) -> Value {
        let mut command = json!({"op": "subscribe", "topics": topics});
        if let Some(since) = since {
            command["since"] = json!(since);
        }
        self.send_json(command).await;
        let answer = self.next_json().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }

    /// The next `event`, skipping nothing else silently: any other message fails the test.
    pub async fn next_event(&mut self) -> Value {
        let message = self.next_json().await;
        assert_eq!(message["type"], "event", "expected an event, got {message}");
        message
    }

    /// Reads events until one has id `last`; returns them all, in the order received.
    pub async fn events_through(&mut self, last: i64) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await;
            let id = event["id"].as_i64().unwrap();
            events.push(event);
            if id >= last {
                return events;
            }
        }
    }

    /// Closes from the client side and reads until the server has let the connection go.
    pub async fn close(mut self) {
        self.send(Message::Close(None)).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.stream.next()).await {}
    }

    /// Reads (and drops) messages until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.stream.next()).await.expect("a close within the patience");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (u16::from(code), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new()),
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("the connection broke instead of closing: {error}"),
                None => panic!("the connection ended without a close frame"),
            }
        }
    }
}
