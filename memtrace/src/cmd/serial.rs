//! Blocking work off the async runtime, one job at a time: what the daemon's handlers do to
//! its shared state (reading kernel maps and /proc, loading and using kernel symbols) blocks,
//! so it runs on tokio's blocking pool, never on the runtime's workers.
//!
//! The jobs are serialized: a request whose turn has not come waits asynchronously (a fair,
//! first-come queue, occupying no thread), so concurrent scrapes never pile up on the
//! blocking pool: at most one of its threads works for these jobs at any time, and the others
//! could not make progress anyway, since every job takes the same lock. The turn is held by
//! the job itself, not by the request: a client that disconnects while its job runs does not
//! let the next job start beside it. A request waits for its turn a bounded time, then gets
//! [`JobError::Busy`] (a job stuck in the kernel must not hang every later request).

use std::{sync::Arc, time::Duration};

/// Runs blocking jobs one at a time (see the module's documentation).
#[derive(Debug, Default)]
pub struct Serial {
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Why a job did not run to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Its turn did not come within the wait.
    #[error("busy: the previous collection has not finished for {0:?}")]
    Busy(Duration),
    /// It panicked (a bug: the panic was logged).
    #[error("the collection failed: {0}")]
    Failed(String),
}

impl Serial {
    /// Runs `job` on the blocking pool once every job queued before it has finished, waiting
    /// for that at most `wait`; returns its result.
    pub async fn run<T, F>(&self, wait: Duration, job: F) -> Result<T, JobError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let turn = tokio::time::timeout(wait, self.turn.clone().lock_owned())
            .await
            .map_err(|_| JobError::Busy(wait))?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn; // released when the job ends, whoever awaits it
            job()
        })
        .await
        .map_err(|e| JobError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Instant,
    };

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_one_at_a_time() {
        let serial = Arc::new(Serial::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for i in 0..8 {
            let (serial, running, most) = (serial.clone(), running.clone(), most.clone());
            handles.push(tokio::spawn(async move {
                serial
                    .run(Duration::from_secs(10), move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(10));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await
            }));
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap().unwrap());
        }
        results.sort_unstable();
        assert_eq!(results, (0..8).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 1, "two jobs ran at once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_waits_a_bounded_time() {
        let serial = Arc::new(Serial::default());
        let s = serial.clone();
        let long = tokio::spawn(async move {
            s.run(Duration::from_secs(10), || {
                std::thread::sleep(Duration::from_millis(400))
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        let r = serial.run(Duration::from_millis(100), || ()).await;
        assert_eq!(r, Err(JobError::Busy(Duration::from_millis(100))));
        assert!(
            t.elapsed() < Duration::from_millis(350),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(long.await.unwrap(), Ok(()));
        // Free again.
        assert_eq!(serial.run(Duration::from_millis(100), || 7).await, Ok(7));
    }

    /// A request dropped while its job runs (the client went away) keeps the turn taken until
    /// the job ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_job_keeps_its_turn() {
        let serial = Arc::new(Serial::default());
        let ended = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let e = ended.clone();
        let abandoned = serial.run(Duration::from_secs(1), move || {
            std::thread::sleep(Duration::from_millis(300));
            *e.lock().unwrap() = Some(Instant::now());
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), abandoned)
                .await
                .is_err()
        );
        let started = serial
            .run(Duration::from_secs(5), Instant::now)
            .await
            .unwrap();
        let ended = ended.lock().unwrap().expect("the first job ran to its end");
        assert!(
            started >= ended,
            "the next job started before the first ended"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_is_an_error_and_frees_the_turn() {
        let serial = Serial::default();
        let r = serial
            .run(Duration::from_secs(1), || -> u8 { panic!("boom") })
            .await;
        assert!(matches!(r, Err(JobError::Failed(_))), "{r:?}");
        assert_eq!(serial.run(Duration::from_secs(1), || 1).await, Ok(1));
    }
}
