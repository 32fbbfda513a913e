//! A hostile HTTP proxy for the browser tests, in front of a test server: it can hold back SSE
//! responses (as a buffering proxy does), cut SSE streams after a while, and answer long polls
//! that wait too long with a 504 (as a proxy with a short read timeout does).
//!
//! Each request gets its own upstream connection and `Connection: close`, so that the proxy sees
//! every request line (keep-alive would hide later requests of a connection).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to which requests.
#[derive(Clone, Copy, Default)]
pub struct Hostility {
    /// Never pass on any byte of an SSE response (the connection stays open).
    pub hold_streams: bool,
    /// Close SSE connections this long after they open.
    pub cut_streams_after: Option<Duration>,
    /// Answer 504 to a long poll that has not been answered within this long.
    pub cut_polls_after: Option<Duration>,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request target: path and query.
    pub target: String,
    /// Whether the proxy cut it (504 for a poll, a closed connection for a stream).
    pub cut: bool,
}

/// A proxy listening on 127.0.0.1; it stops when dropped.
pub struct Proxy {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str, hostility: Hostility) -> Proxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let _ = relay(client, &upstream, hostility, &seen).await;
                    });
                }
            })
        };
        Proxy { base, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far, in the order they arrived.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one request and its response, applying `hostility`.
async fn relay(
    mut client: TcpStream,
    upstream: &str,
    hostility: Hostility,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let Some((head, body_start)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let target = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let mut request = String::new();
    for line in head.lines().filter(|line| !line.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(request.as_bytes()).await?;
    server.write_all(&body_start).await?;

    let path = target.split('?').next().unwrap_or("");
    let is_stream = path.ends_with("/events");
    let is_poll = head.starts_with("GET ") && path.ends_with("/messages");
    let index = {
        let mut seen = seen.lock();
        seen.push(Seen {
            target: target.clone(),
            cut: false,
        });
        seen.len() - 1
    };
    let mark_cut = || seen.lock()[index].cut = true;

    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    // The rest of the request body, if any, goes up as it comes.
    let upload = tokio::io::copy(&mut client_read, &mut server_write);
    if is_stream && hostility.hold_streams {
        // Swallow the stream; the browser sees an open connection and nothing on it.
        // When the browser gives up on it, the proxy closes the upstream connection too.
        let mut sink = tokio::io::sink();
        let swallow = tokio::io::copy(&mut server_read, &mut sink);
        tokio::select! {
            _ = upload => {}
            _ = swallow => {}
        }
        return Ok(());
    }
    let limit = match (is_stream, is_poll) {
        (true, _) => hostility.cut_streams_after,
        (_, true) => hostility.cut_polls_after,
        _ => None,
    };
    let download = copy_until(&mut server_read, &mut client_write, limit);
    tokio::pin!(upload);
    let outcome = tokio::select! {
        outcome = download => outcome?,
        // The client closed its side: nothing more to relay.
        _ = &mut upload => Relayed::Done,
    };
    match outcome {
        Relayed::Done => {}
        Relayed::CutAfterBytes => mark_cut(),
        Relayed::CutBeforeAnyByte if is_poll => {
            mark_cut();
            client_write
                .write_all(
                    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/html\r\n\
                      Content-Length: 22\r\nConnection: close\r\n\r\n<h1>504 timeout</h1>\r\n",
                )
                .await?;
        }
        Relayed::CutBeforeAnyByte => mark_cut(),
    }
    client_write.shutdown().await
}

enum Relayed {
    Done,
    CutBeforeAnyByte,
    CutAfterBytes,
}

/// Copies until the reader ends, or until `limit` has passed.
async fn copy_until(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    limit: Option<Duration>,
) -> std::io::Result<Relayed> {
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let mut buffer = vec![0u8; 16 * 1024];
    let mut copied = 0usize;
    loop {
        let read = reader.read(&mut buffer);
        let n = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(n) => n?,
                Err(_) if copied == 0 => return Ok(Relayed::CutBeforeAnyByte),
                Err(_) => return Ok(Relayed::CutAfterBytes),
            },
            None => read.await?,
        };
        if n == 0 {
            return Ok(Relayed::Done);
        }
        writer.write_all(&buffer[..n]).await?;
        copied += n;
    }
}

/// Reads a request head; returns it and whatever body bytes came with it.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            return Ok(Some((head, buffer[end + 4..].to_vec())));
        }
        if buffer.len() > 64 * 1024 {
            return Ok(None);
        }
    }
}
