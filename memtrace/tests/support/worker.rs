//! A worker thread whose syscalls are the workload.

use std::{sync::mpsc, thread::JoinHandle};

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs workloads on request; its thread id is known before any workload
/// runs, so programs and ftrace can be set to count exactly its events.
pub struct Worker {
    // Unread where the worker only runs `memcg::force_failures` (dashboards); dead_code is
    // linted per test binary.
    #[allow(dead_code)]
    pub tid: u32,
    jobs: Option<mpsc::Sender<(Job, mpsc::Sender<()>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn() -> Worker {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (jobs_tx, jobs_rx) = mpsc::channel::<(Job, mpsc::Sender<()>)>();
        let handle = std::thread::Builder::new()
            .name("memtrace-work".into())
            .spawn(move || {
                // SAFETY: gettid cannot fail.
                tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
                for (job, done) in jobs_rx {
                    job();
                    let _ = done.send(());
                }
            })
            .expect("spawn worker");
        Worker {
            tid: tid_rx.recv().expect("worker tid"),
            jobs: Some(jobs_tx),
            handle: Some(handle),
        }
    }

    /// Hands `job` to the worker; the receiver hears when it is done.
    fn submit(&self, job: impl FnOnce() + Send + 'static) -> mpsc::Receiver<()> {
        let (done_tx, done_rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send((Box::new(job), done_tx))
            .expect("worker alive");
        done_rx
    }

    /// Runs `job` on the worker and waits for it to finish.
    // Unused where the worker only runs `memcg::force_failures` (dashboards, trace);
    // dead_code is linted per test binary.
    #[allow(dead_code)]
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        self.submit(job).recv().expect("worker finished the job");
    }

    /// Runs `job` on the worker; returns false if it did not finish within `timeout` (it may
    /// still be running).
    pub fn run_timeout(
        &self,
        job: impl FnOnce() + Send + 'static,
        timeout: std::time::Duration,
    ) -> bool {
        self.submit(job).recv_timeout(timeout).is_ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
