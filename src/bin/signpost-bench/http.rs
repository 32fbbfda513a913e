//! The client side of signpost's HTTP API, as the generator uses it.
//!
//! Requests (join, send, poll, leave) go over [`Connection`], a minimal HTTP/1.1 keep-alive
//! client: one request at a time per connection, the request written in one buffer, the response
//! read by its `Content-Length`. It sends what a browser's `fetch` sends (method, path, `Host`,
//! `Authorization: Bearer`, `Content-Type: application/json`) and costs the generator a few
//! microseconds per request, so that on a shared machine the figures measure the server, not
//! the client. SSE streams, which are long-lived and chunked, go through reqwest and are parsed
//! by `eventsource-stream`, as the integration tests do.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Rocket closes a keep-alive connection after 5 s without a request; reconnect before that.
const REUSE_IDLE_LIMIT: Duration = Duration::from_secs(4);

/// Why a request got no answer with a status: the connection failed, or the answer was not
/// HTTP this client understands. Counted as errors under the name `connection`.
#[derive(Debug)]
pub struct ConnectionError(pub String);

/// One keep-alive HTTP/1.1 connection to the server.
pub struct Connection {
    server: SocketAddr,
    /// The loopback address the connection comes from (the abuse mode plays many clients);
    /// `None`: the system's choice.
    local: Option<IpAddr>,
    host: String,
    stream: Option<TcpStream>,
    /// Bytes read from the socket; `consumed` of them belong to answers already returned.
    buffer: Vec<u8>,
    consumed: usize,
    last_used: Instant,
}

/// An answer: its status and its body, borrowed from the connection's buffer.
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl Connection {
    pub fn new(server: SocketAddr) -> Self {
        Self::from_address(server, None)
    }

    /// A connection whose socket is bound to `local` first, so that the server sees it as
    /// coming from that address.
    pub fn from_address(server: SocketAddr, local: Option<IpAddr>) -> Self {
        Self {
            server,
            local,
            host: server.to_string(),
            stream: None,
            buffer: Vec::with_capacity(16 * 1024),
            consumed: 0,
            last_used: Instant::now(),
        }
    }

    /// Writes the head of a request into `out` (cleared first); the body follows it.
    pub fn head(
        &self,
        out: &mut Vec<u8>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body_len: usize,
    ) {
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        if let Some(token) = token {
            out.extend_from_slice(b"\r\nAuthorization: Bearer ");
            out.extend_from_slice(token.as_bytes());
        }
        if body_len > 0 {
            out.extend_from_slice(b"\r\nContent-Type: application/json");
        }
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// Sends a complete request (head and body) and reads its answer. A request is never
    /// retried: a POST that may have been accepted must not be sent twice.
    pub async fn request(&mut self, request: &[u8]) -> Result<Answer<'_>, ConnectionError> {
        self.request_parts(&[request]).await
    }

    /// [`Connection::request`] with the request in several parts, written one after another
    /// (a large body shared by many requests need not be copied into each).
    pub async fn request_parts(
        &mut self,
        request: &[&[u8]],
    ) -> Result<Answer<'_>, ConnectionError> {
        match self.exchange(request).await {
            Ok((status, start, end)) => Ok(Answer {
                status,
                body: &self.buffer[start..end],
            }),
            Err(error) => {
                self.stream = None;
                Err(ConnectionError(error.to_string()))
            }
        }
    }

    async fn exchange(&mut self, request: &[&[u8]]) -> std::io::Result<(u16, usize, usize)> {
        self.buffer.drain(..self.consumed);
        self.consumed = 0;
        if self.last_used.elapsed() > REUSE_IDLE_LIMIT {
            self.stream = None;
        }
        if self.stream.is_none() {
            self.buffer.clear();
            self.stream = Some(connect(self.server, self.local).await?);
        }
        let stream = self.stream.as_mut().expect("connected above");
        for part in request {
            stream.write_all(part).await?;
        }

        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            read_more(stream, &mut self.buffer).await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).map_err(invalid)?;
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("no HTTP/1.1 status line"))?;
        let mut length = None;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(invalid)?);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid("a chunked answer where a sized one was expected"));
            }
        }
        let end = head_end + length.unwrap_or(0);
        while self.buffer.len() < end {
            read_more(stream, &mut self.buffer).await?;
        }
        self.consumed = end;
        self.last_used = Instant::now();
        if close {
            self.stream = None;
        }
        Ok((status, head_end, end))
    }
}

/// A TCP connection to `server` from `local` (any port), with Nagle's algorithm off.
pub async fn connect(server: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match local {
        None => TcpStream::connect(server).await?,
        Some(local) => {
            let socket = match local {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(local, 0))?;
            socket.connect(server).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    buffer.reserve(8 * 1024);
    if stream.read_buf(buffer).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn invalid(error: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
}

/// A peer as its own client knows it after joining.
#[derive(Debug, Clone, Deserialize)]
pub struct Joined {
    pub peer_id: String,
    pub token: String,
}

/// What a failed API call produced: an error status, no answer at all, or an answer that does
/// not say what docs/API.md says it should.
#[derive(Debug)]
pub enum Failure {
    Status(u16, String),
    Connection(ConnectionError),
    Invalid(String),
}

impl Failure {
    /// The key errors are counted under: the status code, or `connection`.
    pub fn key(&self) -> String {
        match self {
            Failure::Status(status, _) => status.to_string(),
            Failure::Connection(_) => "connection".into(),
            Failure::Invalid(_) => "invalid_answer".into(),
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Failure::Status(status, body) => format!("{status} {body}"),
            Failure::Connection(ConnectionError(error)) | Failure::Invalid(error) => error.clone(),
        }
    }
}

/// `POST /api/rooms/{room}/peers` with an empty body.
pub async fn join(connection: &mut Connection, room: &str) -> Result<Joined, Failure> {
    let mut request = Vec::with_capacity(256);
    connection.head(
        &mut request,
        "POST",
        &format!("/api/rooms/{room}/peers"),
        None,
        0,
    );
    let answer = connection
        .request(&request)
        .await
        .map_err(Failure::Connection)?;
    if answer.status != 201 {
        return Err(Failure::Status(
            answer.status,
            String::from_utf8_lossy(answer.body).into_owned(),
        ));
    }
    serde_json::from_slice(answer.body)
        .map_err(|error| Failure::Connection(ConnectionError(format!("join answer: {error}"))))
}

/// `DELETE /api/rooms/{room}/peers/{peer}`.
pub async fn leave(connection: &mut Connection, room: &str, peer: &Joined) -> Result<(), Failure> {
    let mut request = Vec::with_capacity(256);
    let path = format!("/api/rooms/{room}/peers/{}", peer.peer_id);
    connection.head(&mut request, "DELETE", &path, Some(&peer.token), 0);
    let answer = connection
        .request(&request)
        .await
        .map_err(Failure::Connection)?;
    match answer.status {
        204 => Ok(()),
        status => Err(Failure::Status(
            status,
            String::from_utf8_lossy(answer.body).into_owned(),
        )),
    }
}

/// A parsed SSE stream.
pub type Events = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

/// Opens a peer's SSE stream as `EventSource` would (the token in the query).
pub async fn events(
    client: &reqwest::Client,
    server: SocketAddr,
    room: &str,
    peer: &Joined,
) -> Result<Events, Failure> {
    let url = format!(
        "http://{server}/api/rooms/{room}/peers/{}/events?token={}",
        peer.peer_id, peer.token
    );
    let response = client
        .get(url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .map_err(|error| Failure::Connection(ConnectionError(error.to_string())))?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        return Err(Failure::Status(status, body));
    }
    Ok(response.bytes_stream().eventsource().boxed())
}

/// A client for SSE streams: no pool limit, no timeout (streams are long), no proxy.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .expect("a reqwest client")
}

/// One received envelope, borrowed from the event's text. `data` is only looked into for the
/// generator's own messages (type `bench`).
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    pub id: u64,
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(borrow, default)]
    pub data: Option<&'a serde_json::value::RawValue>,
}

/// The `data` of a generator message: its global sequence number and when its POST started
/// (nanoseconds since the generator's epoch).
#[derive(Debug, Deserialize)]
pub struct Stamp {
    pub seq: u64,
    pub t: u64,
}

/// A long-poll answer.
#[derive(Debug, Deserialize)]
pub struct PollAnswer<'a> {
    #[serde(borrow)]
    pub messages: Vec<Envelope<'a>>,
    pub last_id: u64,
    pub reset: bool,
}
