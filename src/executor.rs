//! Pauses that let an executor's other work run: a long task (a listing
//! rendered in slices, a large response written in slices) calls
//! [`after_next_poll`] between its steps, so the small requests that
//! arrived meanwhile are reaped and served before its next step. Nothing
//! enters or leaves but the task's own wake-up.

/// Resume once the executor has polled for I/O again, behind the tasks
/// that poll woke. A task queue runs its ready tasks until it is empty or
/// the preempt timer (100 ms) fires, and only then submits and reaps I/O: a
/// bulk read that merely yielded would run its next slice before the small
/// requests whose bytes have arrived but are not yet reaped (or whose
/// socket polls are not even submitted yet). Only the executor's poll fires
/// timers, so a timer that is still pending when first polled resumes the
/// task after that poll. A microsecond's timer makes the poll not wait at
/// all when nothing else is ready (with 20 µs, listings in slices lost 14 %
/// of their throughput to idle waits) — but a timer that has already
/// expired when first polled completes at once, without a poll, so each
/// timer is armed and checked back to back and armed again (longer) if the
/// moment passed in between (a debug build, or a thread descheduled there).
pub async fn after_next_poll() {
    NextPoll { armed: None }.await;
    glommio::executor().yield_now().await;
}

/// A timer armed so that it is still pending when first polled (see
/// [`after_next_poll`]).
struct NextPoll {
    armed: Option<glommio::timer::Timer>,
}

impl std::future::Future for NextPoll {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::pin::Pin;
        use std::task::Poll;
        if let Some(t) = self.armed.as_mut() {
            return Pin::new(t).poll(cx).map(drop);
        }
        for micros in [1, 1, 10, 100, 1000] {
            let mut t = glommio::timer::Timer::new(std::time::Duration::from_micros(micros));
            if Pin::new(&mut t).poll(cx).is_pending() {
                self.armed = Some(t);
                return Poll::Pending;
            }
        }
        // The thread lost the CPU for over a millisecond between arming and
        // checking, every time: go on (the next pause tries again).
        Poll::Ready(())
    }
}
