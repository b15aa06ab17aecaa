//! The threads that run secret verifications (argon2) for the token endpoint.
//!
//! argon2 is CPU-bound by design. On tokio's blocking pool it competed with the proxy's
//! workers at the same priority, so a flood of token requests took the API-key p99 to 4×
//! idle on a 2-core machine, and the pool grew a thread per queued request. Here a few
//! threads of our own, started as needed up to the number of verification slots, run at a
//! lower priority (nice 10): under contention the proxy's workers come first, and the token
//! endpoint still gets its share.
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// How much lower than the proxy's workers the verification threads run.
pub const NICE: i32 = 10;

struct Pool {
    tx: Sender<Job>,
    rx: Arc<Mutex<Receiver<Job>>>,
    threads: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        Mutex::new(Pool { tx, rx: Arc::new(Mutex::new(rx)), threads: 0 })
    })
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>) {
    // Linux: a nice value is per thread. Refused (a sandbox) only means normal priority.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::debug!(error = %e, "cannot lower the verification thread's priority");
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            // A panicking job drops its reply sender (its caller answers server_error)
            // and must not take the thread with it.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

/// Runs `f` on a verification thread, starting threads until there are `threads` of them
/// (the slots bound how many jobs run at once). `None` if no thread could run it.
pub async fn run<T: Send + 'static>(threads: usize, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    {
        let mut p = pool().lock().unwrap_or_else(|p| p.into_inner());
        while p.threads < threads.max(1) {
            let rx = p.rx.clone();
            if std::thread::Builder::new().name("verify".into()).spawn(move || worker(rx)).is_err() {
                break;
            }
            p.threads += 1;
        }
        if p.threads == 0 {
            return None;
        }
        p.tx.send(Box::new(move || {
            let _ = done.send(f());
        }))
        .ok()?;
    }
    result.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_answers_none_and_the_threads_live_on() {
        let r: Option<()> = run(1, || panic!("a bug in a verification")).await;
        assert!(r.is_none());
        assert_eq!(run(1, || 7).await, Some(7), "the pool still runs jobs");
    }

    #[tokio::test]
    async fn runs_jobs_on_a_few_lower_priority_threads() {
        let results = futures_join(8).await;
        assert_eq!(results.iter().filter(|r| r.is_some()).count(), 8);
        let names: Vec<_> = results.iter().flatten().map(|(n, _)| n.clone()).collect();
        assert!(names.iter().all(|n| n == "verify"), "{names:?}");
        assert!(pool().lock().unwrap().threads <= 2, "threads are bounded by the slots asked for");
        // The threads run at a lower priority where the system allows it.
        let nice: Vec<i32> = results.iter().flatten().map(|(_, p)| *p).collect();
        assert!(nice.iter().all(|p| *p == NICE || *p == 0), "{nice:?}");
    }

    async fn futures_join(n: usize) -> Vec<Option<(String, i32)>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                run(2, || {
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    let prio = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0);
                    (name, prio)
                })
                .await,
            );
        }
        out
    }
}
