//! One HTTP/1.1 connection to the app, held by hand: every request on it reaches the HTTP
//! worker that accepted it, so its rate-limiter shard (a pooling client may open another
//! connection, which another worker with a full bucket would answer).

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, header::HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{TestApp, CHAOS_TOKEN};

pub struct OneConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// What the server answered, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The `r=` of the `RateLimit` header: what the limiter left after deciding this
    /// request. `None` when it did not decide (a request let through unasked, failing open
    /// on a busy machine, carries no such header).
    pub fn remaining(&self) -> Option<u64> {
        self.headers
            .get("ratelimit")
            .and_then(|state| state.to_str().ok())
            .and_then(|state| state.split(';').find_map(|field| field.strip_prefix("r=")))
            .and_then(|left| left.parse().ok())
    }
}

impl OneConnection {
    pub async fn open(app: &TestApp) -> Self {
        let host = app.address.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self { sender, host }
    }

    /// Sends one request (with these extra headers and body) and reads the whole answer.
    pub async fn send(&mut self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        self.sender.ready().await.expect("the server kept the connection open");
        let mut request = Request::builder().method(method).uri(path).header("host", &self.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .sender
            .send_request(request.body(Full::new(body)).unwrap())
            .await
            .expect("the server kept the connection open");
        let (parts, body) = response.into_parts();
        Answer { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    /// `POST /ops/chaos` on this connection, so on this worker.
    pub async fn chaos(&mut self, fault: &Value) -> Answer {
        let bearer = format!("Bearer {CHAOS_TOKEN}");
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        self.send(Method::POST, "/ops/chaos", &headers, Bytes::from(fault.to_string())).await
    }
}
