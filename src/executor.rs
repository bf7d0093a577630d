//! What a long task on an executor shares with the others: pauses that
//! let the executor's other work run, and one spare buffer for large
//! output. A long task (a listing rendered in slices, a large response
//! written in slices) calls [`after_next_poll`] between its steps, so the
//! small requests that arrived meanwhile are reaped and served before its
//! next step. A large body is rendered into the executor's spare buffer
//! ([`reserve`]) and the buffer handed back once sent ([`give_back`]), so
//! the next large response writes into memory already mapped. Nothing
//! enters or leaves but the task's own wake-up and the buffer.

use std::cell::RefCell;

thread_local! {
    /// The largest output buffer an executor's tasks gave back, kept for
    /// the next large response: a fresh multi-megabyte buffer costs a page
    /// fault per 4 KiB on first touch (15 % of a 1.4 MB listing's CPU).
    /// Keeping more than one measured no better.
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The largest buffer an executor keeps as its spare: HM9000's
/// `apps/actual` at 250,000 instances lists in ~105 MB.
const SPARE_MAX: usize = 128 << 20;

/// Keep `buf` (an emptied output buffer) as the executor's spare if it is
/// larger than the one kept (up to [`SPARE_MAX`]); otherwise free it.
pub fn give_back(mut buf: Vec<u8>) {
    if buf.capacity() > SPARE_MAX {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.capacity() < buf.capacity() {
            *s = buf;
        }
    });
}

/// Make room for `additional` more bytes in `out`, taking the executor's
/// spare buffer when it is large enough and `out` is not.
pub fn reserve(out: &mut Vec<u8>, additional: usize) {
    if out.capacity() - out.len() >= additional {
        return;
    }
    let need = out.len() + additional;
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.capacity() >= need {
            let mut big = std::mem::take(&mut *s);
            big.extend_from_slice(out);
            *out = big;
        }
    });
    out.reserve(additional);
}

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
