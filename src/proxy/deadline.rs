//! Upstream request timeouts on re-armed timers.
//!
//! A Tokio timer registered per upstream request and removed at its response costs a timer
//! wheel insert and removal under the driver's lock, about 500 instructions a request
//! (benches/README.md, eighth session). Timers kept per thread and re-armed instead only move
//! their expiry later, a compare-and-swap, while they are still registered. A kept timer whose
//! old deadline passes before it is used again fires once for nothing; the next use registers
//! it anew.
//!
//! INVARIANT: a kept timer is handed out only inside the runtime that created it (a timer of a
//! shut-down runtime panics when polled); the pool belongs to one runtime at a time.

use std::cell::RefCell;
use std::pin::Pin;

use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Timers kept per thread at most: about the requests one thread has at upstreams at once.
const KEEP: usize = 64;

/// The runtime whose timers these are, and the timers.
type Kept = Option<(Id, Vec<Pin<Box<Sleep>>>)>;

thread_local! {
    static KEPT: RefCell<Kept> = const { RefCell::new(None) };
}

/// A timer for `deadline`: a kept one of this runtime re-armed, or a new one.
pub fn take(deadline: Instant) -> Pin<Box<Sleep>> {
    let runtime = Handle::try_current().ok().map(|h| h.id());
    let kept = KEPT.with_borrow_mut(|kept| match (kept, runtime) {
        (Some((id, timers)), Some(runtime)) if *id == runtime => timers.pop(),
        _ => None,
    });
    match kept {
        Some(mut timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    }
}

/// Keep `timer` for the next request of this thread's runtime (a pool of another runtime's
/// timers is dropped for it).
pub fn give_back(timer: Pin<Box<Sleep>>) {
    let Ok(runtime) = Handle::try_current().map(|h| h.id()) else {
        return;
    };
    KEPT.with_borrow_mut(|kept| match kept {
        Some((id, timers)) if *id == runtime => {
            if timers.len() < KEEP {
                timers.push(timer);
            }
        }
        _ => *kept = Some((runtime, vec![timer])),
    });
}

#[cfg(test)]
fn kept() -> usize {
    KEPT.with_borrow(|kept| kept.as_ref().map_or(0, |(_, timers)| timers.len()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A kept timer is re-armed for its next deadline: it does not fire at the old one, and
    /// it fires at the new one.
    #[tokio::test]
    async fn a_kept_timer_fires_at_its_new_deadline_not_its_old_one() {
        let start = Instant::now();
        let mut first = take(start + Duration::from_millis(50));
        // Answered early: kept.
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
            () = &mut first => panic!("fired before its deadline"),
        }
        let address = &*first as *const Sleep;
        give_back(first);
        assert_eq!(kept(), 1);

        let mut second = take(start + Duration::from_secs(60));
        assert_eq!(
            &*second as *const Sleep, address,
            "the kept timer is reused"
        );
        assert_eq!(kept(), 0);
        tokio::time::sleep_until(start + Duration::from_millis(100)).await;
        assert!(
            poll_once(&mut second).await.is_pending(),
            "fired at the deadline it had before"
        );
        give_back(second);

        let due = Instant::now() + Duration::from_millis(20);
        let mut third = take(due);
        assert_eq!(&*third as *const Sleep, address);
        (&mut third).await;
        assert!(Instant::now() >= due);
    }

    /// A timer kept by one runtime is never handed to another (it would panic when polled
    /// after its runtime shut down).
    #[test]
    fn another_runtime_gets_a_timer_of_its_own() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let first = runtime();
        let address = first.block_on(async {
            let timer = take(Instant::now() + Duration::from_secs(5));
            let address = &*timer as *const Sleep as usize;
            give_back(timer);
            address
        });
        drop(first);
        let second = runtime();
        second.block_on(async {
            let mut timer = take(Instant::now() + Duration::from_millis(1));
            assert_ne!(&*timer as *const Sleep as usize, address);
            (&mut timer).await;
            give_back(timer);
            assert_eq!(kept(), 1, "the other runtime's timers were dropped");
        });
    }

    async fn poll_once(timer: &mut Pin<Box<Sleep>>) -> std::task::Poll<()> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(timer.as_mut().poll(cx))).await
    }
}
