//! A subsystem's background tasks: tracked, asked to stop, and cut off if
//! they do not within a grace period, so that nothing outlives a shutdown
//! (a task stuck on a dead Redis included).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks one subsystem owns. Each task watches its subsystem's own
/// stop token to finish cleanly; [`Tasks::stop`] drops what is left.
#[derive(Default)]
pub struct Tasks {
    tracker: TaskTracker,
    abort: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Tasks::default()
    }

    /// Runs `task` until it ends or the tasks are cut off.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let abort = self.abort.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = abort.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Waits up to `grace` for every task to end (the caller has asked them
    /// to), then cuts off the rest and waits for them to be dropped. False
    /// if some had to be cut off.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_ok() {
            return true;
        }
        self.abort.cancel();
        self.tracker.wait().await;
        false
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_finishes_is_waited_for_and_one_that_hangs_is_cut_off() {
        let tasks = Tasks::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = done_tx.send(());
        });
        assert!(tasks.stop(Duration::from_secs(5)).await, "a finishing task needs no cut-off");
        assert!(done_rx.await.is_ok());

        let tasks = Tasks::new();
        tasks.spawn(std::future::pending());
        assert_eq!(tasks.len(), 1);
        assert!(!tasks.stop(Duration::from_millis(20)).await, "a hanging task is cut off");
        assert!(tasks.is_empty());
    }
}
