//! Graceful shutdown: on SIGTERM pingora stops accepting and we wait for the requests in
//! flight — up to `shutdown_grace` seconds, and no longer than they need — then exit 0.
//!
//! pingora alone sleeps the whole grace period after SIGTERM even when nothing is in
//! flight; counting requests lets the process leave as soon as the last one is done.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// Requests between `new_ctx` and the end of `logging`.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Counts one request until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Held by each request's context.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shutdown signal watcher handed to pingora's `Server::run`.
/// SIGTERM and SIGQUIT: graceful; SIGINT: fast; SIGHUP is ignored here (the reload
/// service handles it) so that it never terminates the process.
pub struct DrainingShutdown {
    pub in_flight: Arc<InFlight>,
    pub grace: Duration,
    /// Runs just before the process exits after a drain (the last-use times' final write).
    pub before_exit: Option<Arc<dyn Fn() + Send + Sync>>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = quit.recv() => break,
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = hup.recv() => continue,
            }
        }
        tracing::info!(in_flight = self.in_flight.get(), grace_secs = self.grace.as_secs(), "SIGTERM: draining");
        let (in_flight, grace, before_exit) = (self.in_flight.clone(), self.grace, self.before_exit.clone());
        let spawned = std::thread::Builder::new().name("drain".into()).spawn(move || drain(&in_flight, grace, before_exit));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch the drain; waiting the whole grace period");
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Exits 0 as soon as no request is in flight; returns (leaving pingora to finish at the
/// end of its grace period) if requests are still running when `grace` has passed.
fn drain(in_flight: &InFlight, grace: Duration, before_exit: Option<Arc<dyn Fn() + Send + Sync>>) {
    let start = Instant::now();
    // Let pingora stop its listeners first, so no new request slips in after we look.
    std::thread::sleep(Duration::from_millis(100));
    while start.elapsed() < grace {
        if in_flight.get() == 0 {
            tracing::info!(after_ms = start.elapsed().as_millis() as u64, "drained; exiting");
            if let Some(f) = &before_exit {
                f();
            }
            crate::telemetry::flush_audit(Duration::from_secs(2));
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(in_flight = in_flight.get(), "grace period over with requests in flight");
}
