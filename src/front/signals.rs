//! Shutting down on the signals Rocket's `shutdown` settings name, as Rocket's own server does:
//! SIGINT when `ctrlc` is on, and each of `signals` (by default SIGTERM and SIGHUP).

use std::future::Future;

use futures_util::future::{pending, select_all, FutureExt};
use rocket::figment::Figment;

/// A future that completes when the process receives one of the signals that `figment`'s
/// `shutdown` settings name. The handlers are installed now, so a signal that arrives before
/// the future is first polled is not missed.
pub fn shutdown_signals(figment: &Figment) -> impl Future<Output = ()> + Send + 'static {
    let settings = rocket::Config::try_from(figment)
        .map(|config| config.shutdown)
        .unwrap_or_default();
    let mut waits = Vec::new();
    if settings.ctrlc {
        waits.push(async { tokio::signal::ctrl_c().await.unwrap_or(()) }.boxed());
    }
    #[cfg(unix)]
    for sig in &settings.signals {
        use rocket::config::Sig;
        use tokio::signal::unix::{signal, SignalKind};
        let kind = match sig {
            Sig::Alrm => SignalKind::alarm(),
            Sig::Chld => SignalKind::child(),
            Sig::Hup => SignalKind::hangup(),
            Sig::Int => SignalKind::interrupt(),
            Sig::Io => SignalKind::io(),
            Sig::Pipe => SignalKind::pipe(),
            Sig::Quit => SignalKind::quit(),
            Sig::Term => SignalKind::terminate(),
            Sig::Usr1 => SignalKind::user_defined1(),
            Sig::Usr2 => SignalKind::user_defined2(),
        };
        match signal(kind) {
            Ok(mut stream) => waits.push(async move { stream.recv().await.unwrap_or(()) }.boxed()),
            Err(error) => crate::logging::warn(format_args!("cannot listen for {sig}: {error}")),
        }
    }
    async move {
        if waits.is_empty() {
            pending::<()>().await;
        }
        select_all(waits).await;
    }
}
