//! The background lane: one low-priority thread for reload work and for freeing retired
//! config.
//!
//! Reading, parsing and compiling a large config, building its runtime, and freeing the
//! version it replaces are all CPU work that no request waits for. They run here so that a
//! reload — even of 10,000 routes, even every 100 ms, even on a proxy confined to one core —
//! takes CPU only when the request path does not want it. The thread is `SCHED_IDLE` (nice 19
//! where that is refused): a worker that wakes for a request preempts it at once.
//!
//! A retired config version is freed here too, but only once the requests still using it have
//! ended: whoever drops the last reference frees it, and that must not be a worker in the
//! middle of a request.
//!
//! The thread is started when work comes and ends once it has had none for `LINGER` (2 s). A
//! proxy with one worker is then a process of one thread between reloads, and that makes each
//! of its system calls cheaper: Linux skips the reference counting of a file descriptor's
//! lookup (`fdget`/`fput`, 0.5–1% of the proxy's CPU under load) only while no other thread
//! shares the file table.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often retired values still in use are looked at again.
const REAP_EVERY: Duration = Duration::from_millis(50);

/// How long the thread waits for work before it ends.
#[cfg(not(test))]
const LINGER: Duration = Duration::from_secs(2);
#[cfg(test)]
const LINGER: Duration = Duration::from_millis(200);

/// Why background work did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    /// The background thread could not be started or has ended.
    #[error("the background thread is gone")]
    Gone,
    /// The work panicked (a bug).
    #[error("background work panicked")]
    Panicked,
}

type Job = Box<dyn FnOnce() + Send>;

/// A value to free once nothing else holds it.
trait Retired: Send {
    /// Whether someone other than the background thread still holds it.
    fn in_use(&self) -> bool;
}

impl<T: Send + Sync> Retired for Arc<T> {
    fn in_use(&self) -> bool {
        Arc::strong_count(self) > 1
    }
}

enum Work {
    Run(Job),
    Retire(Box<dyn Retired>),
}

/// The running thread's queue, `None` while no thread runs. Work is sent, and the thread
/// decides to end, under this lock, so nothing is sent to a thread that has decided to end.
static LANE: Mutex<Option<mpsc::Sender<Work>>> = Mutex::new(None);

/// Hands `work` to the thread, starting one if none runs; gives it back if no thread can be
/// started.
fn send(work: Work) -> Result<(), Work> {
    let mut lane = LANE.lock().unwrap_or_else(PoisonError::into_inner);
    let work = match lane.as_ref() {
        Some(queue) => match queue.send(work) {
            Ok(()) => return Ok(()),
            // The thread is gone without clearing the slot: it panicked.
            Err(mpsc::SendError(work)) => work,
        },
        None => work,
    };
    let (queue, rx) = mpsc::channel::<Work>();
    let spawned = std::thread::Builder::new()
        .name("strait-background".into())
        .spawn(move || {
            lower_priority();
            serve(&rx);
        });
    if let Err(e) = spawned {
        *lane = None;
        tracing::error!(error = %e, "cannot start the background thread");
        return Err(work);
    }
    // The receiver lives until the thread ends, and it ends only after clearing the slot,
    // which this lock keeps it from doing yet.
    let sent = queue.send(work).map_err(|mpsc::SendError(work)| work);
    *lane = Some(queue);
    sent
}

fn serve(rx: &mpsc::Receiver<Work>) {
    let mut retired: Vec<Box<dyn Retired>> = Vec::new();
    loop {
        let wait = if retired.is_empty() {
            LINGER
        } else {
            REAP_EVERY
        };
        let next = match rx.recv_timeout(wait) {
            Ok(work) => Some(work),
            Err(RecvTimeoutError::Timeout) if retired.is_empty() => match work_or_end(rx) {
                Some(work) => Some(work),
                None => return,
            },
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match next {
            Some(Work::Run(job)) => job(),
            Some(Work::Retire(value)) => retired.push(value),
            None => {}
        }
        // Dropping the ones no request holds any more frees them, here.
        retired.retain(|value| value.in_use());
    }
}

/// Work sent between the idle timeout and taking the lock, or `None` once the slot is
/// cleared: the thread is to end, and the next work starts another.
fn work_or_end(rx: &mpsc::Receiver<Work>) -> Option<Work> {
    let mut lane = LANE.lock().unwrap_or_else(PoisonError::into_inner);
    let work = rx.try_recv().ok();
    if work.is_none() {
        *lane = None;
    }
    work
}

/// Runs `work` on the background thread, inside the current tokio runtime's context (the
/// runtime it builds may start tasks), and waits for its result.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackgroundError> {
    let runtime = tokio::runtime::Handle::current();
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _context = runtime.enter();
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    send(Work::Run(job)).map_err(|_| BackgroundError::Gone)?;
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(BackgroundError::Panicked),
        Err(_) => Err(BackgroundError::Gone),
    }
}

/// Frees `value` on the background thread once no one else holds it (without waiting).
/// Without a background thread it is dropped here.
pub fn retire<T: Send + Sync + 'static>(value: Arc<T>) {
    // Without a thread the value comes back, and drops here.
    let _ = send(Work::Retire(Box::new(value)));
}

/// `SCHED_IDLE` for the calling thread, or nice 19 if refused (both are per thread on Linux).
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if idle != 0 {
        // SAFETY: gettid has no preconditions; setpriority only changes this thread's nice.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn dropped_within(flag: &AtomicBool, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if flag.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        flag.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn work_runs_on_the_background_thread() {
        let name = run(|| std::thread::current().name().map(str::to_owned))
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("strait-background"));
        assert!(matches!(
            run(|| panic!("boom")).await,
            Err(BackgroundError::Panicked)
        ));
        // The lane survives a panicking job.
        assert_eq!(run(|| 7).await.expect("ran"), 7);
    }

    fn lane_running() -> bool {
        LANE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    #[tokio::test]
    async fn the_thread_ends_when_idle_and_a_new_one_takes_the_next_work() {
        let first = run(|| std::thread::current().id()).await.expect("ran");
        // Other tests of this binary use the lane too: wait for a quiet moment, not for a
        // fixed time.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while lane_running() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!lane_running(), "the idle thread did not end");
        let second = run(|| std::thread::current().id()).await.expect("ran");
        assert_ne!(first, second, "work ran on a thread that had ended");
    }

    #[tokio::test]
    async fn a_retired_value_is_freed_only_after_its_last_user_lets_go() {
        let freed = Arc::new(AtomicBool::new(false));
        let value = Arc::new(Flag(freed.clone()));
        let user = value.clone();
        retire(value);
        assert!(
            !dropped_within(&freed, Duration::from_millis(200)).await,
            "freed while still in use"
        );
        drop(user);
        assert!(
            dropped_within(&freed, Duration::from_secs(2)).await,
            "not freed after its last user let go"
        );
    }
}
