//! A TCP relay in front of a `redis-server` that can make its subscribers deaf: every connection
//! stays up and every reply still arrives (a PING's pong, a SUBSCRIBE's confirmation), but no
//! published message reaches a subscriber any more. That is how an instance's subscriber
//! connection is after a Sentinel failover, to the old master (which keeps its subscribers
//! connected for ~10 s while publishes go to the new one), or after a cluster slot moved without
//! the client noticing: nothing for the instance to notice but the silence, so no reconnection
//! makes up for the wake-ups lost. Connections that never subscribed (the commands') are relayed
//! as they are.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct DeafSubscribers {
    address: SocketAddr,
    deaf: Arc<AtomicBool>,
}

impl DeafSubscribers {
    /// A relay to the Redis on 127.0.0.1:`port`, passing everything on until
    /// [`deafen`](Self::deafen).
    pub async fn start(port: u16) -> DeafSubscribers {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("the relay's address");
        let deaf = Arc::new(AtomicBool::new(false));
        let upstream = SocketAddr::from(([127, 0, 0, 1], port));
        tokio::spawn({
            let deaf = deaf.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, deaf.clone()));
                }
            }
        });
        DeafSubscribers { address, deaf }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// From now on, no published message reaches a subscriber, on the connections open now or
    /// opened later.
    pub fn deafen(&self) {
        self.deaf.store(true, Ordering::SeqCst);
    }
}

/// Relays one connection both ways until either side closes: what the client sends as it is,
/// what Redis answers frame by frame, less the published messages once deaf.
async fn relay(client: TcpStream, server: TcpStream, deaf: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let commands = async move {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read @ 1..) = client_read.read(&mut buffer).await {
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    };
    let replies = async move {
        let mut pending = Vec::new();
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read @ 1..) = server_read.read(&mut buffer).await {
            pending.extend_from_slice(&buffer[..read]);
            let mut out = Vec::new();
            while let Some(length) = frame_length(&pending) {
                let frame: Vec<u8> = pending.drain(..length).collect();
                if !(deaf.load(Ordering::SeqCst) && is_published(&frame)) {
                    out.extend_from_slice(&frame);
                }
            }
            if client_write.write_all(&out).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = commands => {}
        () = replies => {}
    }
}

/// Whether `frame` is a published message pushed to a subscriber (`message`, `pmessage` or
/// `smessage`, as RESP2 arrays or RESP3 pushes).
fn is_published(frame: &[u8]) -> bool {
    [
        &b"*3\r\n$7\r\nmessage\r\n"[..],
        b">3\r\n$7\r\nmessage\r\n",
        b"*4\r\n$8\r\npmessage\r\n",
        b">4\r\n$8\r\npmessage\r\n",
        b"*3\r\n$8\r\nsmessage\r\n",
        b">3\r\n$8\r\nsmessage\r\n",
    ]
    .iter()
    .any(|start| frame.starts_with(start))
}

/// The length of the RESP value `bytes` start with, once all of it has arrived.
fn frame_length(bytes: &[u8]) -> Option<usize> {
    let line_end = bytes.windows(2).position(|pair| pair == b"\r\n")?;
    let header = std::str::from_utf8(&bytes[1..line_end]).ok()?;
    let after_header = line_end + 2;
    match bytes.first()? {
        b'$' | b'=' | b'!' => {
            let length: i64 = header.parse().ok()?;
            if length < 0 {
                return Some(after_header);
            }
            let end = after_header + length as usize + 2;
            (bytes.len() >= end).then_some(end)
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let count: i64 = header.parse().ok()?;
            let elements = match bytes[0] {
                b'%' | b'|' => count * 2,
                _ => count,
            };
            let mut end = after_header;
            for _ in 0..elements.max(0) {
                end += frame_length(&bytes[end..])?;
            }
            Some(end)
        }
        // Simple strings, errors, integers, nulls, doubles, booleans, big numbers: one line.
        _ => Some(after_header),
    }
}
