//! What one TCP connection may hold: a place among its client address's connections, and writes
//! that wait for a reader that is still reading.
//!
//! - [`Connections`] counts open connections per client address at accept (an IPv6 client by
//!   its /64, as every per-client limit is), so that one address cannot hold every descriptor of
//!   the process; a [`ConnectionSlot`] gives its place back when the connection ends.
//! - [`TimedIo`] wraps a connection's socket and fails a write that has made no progress for
//!   `write_timeout_secs`: hyper has no write timeout, and a client that stops reading would
//!   otherwise keep its stream or its poll answer, and everything they hold, for ever. The
//!   failed write ends hyper's connection, which drops the response body being written and so
//!   runs the RAII guards of whatever it registered (the live stream, presence, gauges).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::client_address::{limit_key, TrustedProxies};

/// Open connections per client address, on this instance.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    /// Open connections by `limit_key`; an address with none has no entry, so the map holds only
    /// addresses that are connected now. A plain mutex: it is held for one map operation, never
    /// across an `.await`, at accept and at close only.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// `max_connections_per_client`.
    limit: usize,
    /// Connections from these are not counted: a proxy carries many clients.
    proxies: TrustedProxies,
}

/// A counted connection's place; dropping it (when the connection ends) frees the place.
pub struct ConnectionSlot {
    inner: Arc<Inner>,
    key: IpAddr,
}

impl Connections {
    pub fn new(limit: usize, proxies: TrustedProxies) -> Self {
        Self {
            inner: Arc::new(Inner {
                open: Mutex::new(HashMap::new()),
                limit,
                proxies,
            }),
        }
    }

    /// `max_connections_per_client`.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Admits a connection from `peer`: `Ok(Some(slot))` holds its place until dropped,
    /// `Ok(None)` is a trusted proxy's connection (not counted), and `Err(())` means the address
    /// already has `max_connections_per_client` open.
    pub fn admit(&self, peer: IpAddr) -> Result<Option<ConnectionSlot>, ()> {
        if self
            .inner
            .proxies
            .trusts(crate::client_address::canonical(peer))
        {
            return Ok(None);
        }
        let key = limit_key(peer);
        let mut open = self.inner.open.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.inner.limit {
            return Err(());
        }
        *count += 1;
        Ok(Some(ConnectionSlot {
            inner: self.inner.clone(),
            key,
        }))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection's socket whose writes fail with `TimedOut` once one has waited `timeout` for
/// the peer to read without any progress. Reads are passed through untouched: the request head
/// has hyper's `header_read_timeout`, a body has `body_read_timeout_secs`, and a connection
/// waiting for its next request is idle by right.
pub struct TimedIo<T> {
    io: T,
    /// `write_timeout_secs`.
    timeout: Duration,
    /// The deadline of the write that is waiting, allocated at the first wait; `stalled` says
    /// whether it is armed. Disarmed by any write or flush that completes.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether a write or flush is waiting for the peer now.
    stalled: bool,
}

impl<T> TimedIo<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            deadline: None,
            stalled: false,
        }
    }

    /// Called when a write could not make progress: arms the deadline if this is the start of
    /// a wait, and fails once it has passed (its timer wakes the connection then).
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = Instant::now() + self.timeout;
        let sleep = match &mut self.deadline {
            Some(sleep) if self.stalled => sleep,
            Some(sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => self
                .deadline
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.stalled = true;
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for write_timeout_secs",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Disarms the deadline after an attempt that completed, or waits on it after one that
    /// could not make progress.
    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match attempt {
            Poll::Ready(result) => {
                self.stalled = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.wait(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timed(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timed(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_flush(cx);
        self.timed(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_shutdown(cx);
        self.timed(cx, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// An address gets `limit` places, a closed connection frees one, an IPv6 /64 is one client
    /// and a trusted proxy is not counted.
    #[test]
    fn places_are_counted_per_client_and_freed_on_drop() {
        let proxies = TrustedProxies::parse(&["10.0.0.1/32".into()]).unwrap();
        let connections = Connections::new(2, proxies);
        let first = connections.admit(ip("2001:db8::1")).unwrap();
        let _second = connections.admit(ip("2001:db8::2")).unwrap();
        assert!(connections.admit(ip("2001:db8::3")).is_err(), "same /64");
        assert!(connections.admit(ip("192.0.2.1")).is_ok(), "another client");
        drop(first);
        assert!(
            connections.admit(ip("2001:db8::3")).is_ok(),
            "a place was freed"
        );
        for _ in 0..10 {
            assert!(matches!(connections.admit(ip("10.0.0.1")), Ok(None)));
        }
    }
}
