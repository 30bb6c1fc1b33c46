//! Waiting for conditions instead of sleeping: [`eventually`] polls until something holds, and
//! [`reconciled_after`] waits for a positive sign that an operator has seen a change, so a test
//! can then assert that nothing else happened.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

/// The first pause between two polls of [`eventually`]; it doubles up to [`POLL_MAX`].
pub const POLL_FIRST: Duration = Duration::from_millis(20);
/// The longest pause between two polls: checks that start a process (`kubectl auth can-i`) or
/// list objects stay cheap on a loaded machine, while a condition that holds soon is seen soon.
pub const POLL_MAX: Duration = Duration::from_millis(200);

/// Poll `check` until it returns `Ok(Some(value))` and return the value; fail after `limit`
/// naming `what` and the last error `check` returned (errors are retried, not fatal: an API call
/// may fail while the thing being waited for is still coming up).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut pause = POLL_FIRST;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Wait until an operator has finished a reconcile that *started* after this call, so everything
/// changed before the call has been seen: the positive signal a "nothing happens" check waits for
/// before it asserts that nothing happened.
///
/// `touch(n)` makes a change the operator reacts to but that changes nothing it renders (a label
/// with value `n`, say); `reconciles()` reads its finished-reconcile counter. The operator here
/// reconciles one object (a namespace), and kube-runtime never runs two reconciles of one object
/// at once. So after touching, then reading the counter as `before`, the first reconcile to
/// finish after `before` may have started before the touch, but the second one started after the
/// first ended, so after the touch. The touch is repeated at every poll, so a reconcile is always
/// coming even if the one for the first touch finished before `before` was read.
pub async fn reconciled_after<T, TF, R, RF>(
    limit: Duration,
    mut touch: T,
    mut reconciles: R,
) -> Result<()>
where
    T: FnMut(u64) -> TF,
    TF: Future<Output = Result<()>>,
    R: FnMut() -> RF,
    RF: Future<Output = Result<u64>>,
{
    let mut n = 0;
    touch(n).await?;
    let before = reconciles().await?;
    eventually("two reconciles after a touch", limit, || {
        n += 1;
        let touched = touch(n);
        let counted = reconciles();
        async move {
            touched.await?;
            Ok((counted.await? >= before + 2).then_some(()))
        }
    })
    .await
}

/// Wait until a GET of `url` answers 2xx (a `/readyz`, a server's ready page), at most `limit`.
pub async fn answers_ok(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    limit: Duration,
) -> Result<()> {
    eventually(what, limit, || async move {
        Ok(http
            .get(url)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_value_once_it_holds_and_names_what_timed_out() -> Result<()> {
        let polls = AtomicU64::new(0);
        let v = eventually("three polls", Duration::from_secs(5), || {
            let n = polls.fetch_add(1, Ordering::Relaxed) + 1;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await?;
        assert_eq!(v, 3);
        let err = eventually("never", Duration::from_secs(1), || async {
            Err::<Option<()>, _>(anyhow::anyhow!("boom"))
        })
        .await
        .unwrap_err();
        assert!(
            format!("{err}").contains("never") && format!("{err}").contains("boom"),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn reconciled_after_waits_for_two_reconciles_after_the_first_touch() -> Result<()> {
        // A fake operator that finishes one reconcile per touch.
        let reconciles = AtomicU64::new(10);
        let touches = AtomicU64::new(0);
        reconciled_after(
            Duration::from_secs(5),
            |_| {
                touches.fetch_add(1, Ordering::Relaxed);
                reconciles.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            },
            || {
                let n = reconciles.load(Ordering::Relaxed);
                async move { Ok(n) }
            },
        )
        .await?;
        // The first touch's reconcile counted before `before` was read; two more were needed.
        assert_eq!(reconciles.load(Ordering::Relaxed), 13);
        assert_eq!(touches.load(Ordering::Relaxed), 3);
        Ok(())
    }
}
