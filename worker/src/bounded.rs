//! Running a batch of background jobs under one time bound: the closing
//! paths (session ends, reloads) must finish whatever a slow upstream does.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;

/// Run `jobs` concurrently and wait for them at most `bound`; the ones still
/// running then are aborted. Returns how many were abandoned.
pub(crate) async fn join_all_within<F>(jobs: impl IntoIterator<Item = F>, bound: Duration) -> usize
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    for job in jobs {
        set.spawn(job);
    }
    let all = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(bound, all).await.is_ok() {
        return 0;
    }
    let left = set.len();
    set.abort_all();
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_past_the_bound_are_abandoned() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let jobs = [true, true, false, false].map(|finishes| {
            let tx = tx.clone();
            async move {
                if !finishes {
                    std::future::pending::<()>().await;
                }
                let _ = tx.send(());
            }
        });
        drop(tx);
        assert_eq!(join_all_within(jobs, Duration::from_millis(300)).await, 2);
        let mut done = 0;
        // Ends once every job dropped its sender: the aborted ones too.
        while rx.recv().await.is_some() {
            done += 1;
        }
        assert_eq!(done, 2);
        let none = Vec::<std::future::Ready<()>>::new();
        assert_eq!(join_all_within(none, Duration::ZERO).await, 0);
    }
}
