//! The write path: plan a change on a window, publish it, retry when the window went stale,
//! and announce the change when it keeps losing.

use super::window::{Margin, Window};
use super::{ExtentCache, retried};
use crate::error::Error;
use crate::extent::Mapping;
use crate::page;
use crate::plan::{Plan, PlanError};
use crate::store::{Answer, Delta, Dir, Op, Outcome, Publish, Store};
use crate::sync::epoch::{Guard, pin};
use crate::sync::retry_hint;

/// After this many lost attempts a change is announced (see `Store::announce`). Losing is rare
/// (a writer changed the window between the read and the publish), so a few quick retries are
/// cheaper than an announcement, which allocates.
pub(super) const ANNOUNCE_AFTER: u64 = 3;

std::thread_local! {
    /// Retries of the calling thread's last change (see [`retries_of_last_operation`]).
    static LAST_RETRIES: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

pub(super) fn note_retries(n: u64) {
    LAST_RETRIES.with(|c| c.set(n));
}

/// How many times the calling thread's last change (any operation that may write) or
/// [`snapshot`](ExtentCache::snapshot) had to start again: the progress tests bound it under
/// hostile writers. Plain reads do not record it.
#[doc(hidden)]
pub fn retries_of_last_operation() -> u64 {
    LAST_RETRIES.with(|c| c.get())
}

impl<M: Mapping> ExtentCache<M> {
    /// Runs an operation that may write ([`run`](Self::run)); then, for a cache in a registry
    /// with a budget, shrinks the registry if the operation took it over (with no guard held,
    /// so that the epoch can free what the operation retired).
    pub(super) fn execute<R, F>(&self, a: u64, b: u64, f: F) -> Result<R, Error<M>>
    where
        F: Fn(&Window<'_, M>) -> Plan<M, R> + Send + Sync + 'static,
        R: Clone + Send + Sync + 'static,
    {
        let answer = self.run(a, b, f);
        if self.store.books().is_some() {
            self.after_change();
        }
        answer
    }

    /// Plans an operation on the window around `[a, b]` and publishes its change; retries on a
    /// stale window. Answers that change nothing (errors included) are confirmed by a second
    /// read of the window, so they too hold at one instant. After [`ANNOUNCE_AFTER`] losses (a
    /// publish that found its window changed, or an answer whose second read disagreed) the
    /// operation is announced, and every writer helps it through (`Store::announce`). Widening
    /// the window or helping a change in flight is not a loss.
    fn run<R, F>(&self, a: u64, b: u64, f: F) -> Result<R, Error<M>>
    where
        F: Fn(&Window<'_, M>) -> Plan<M, R> + Send + Sync + 'static,
        R: Clone + Send + Sync + 'static,
    {
        let mut ticket = None;
        let mut m = Margin::default();
        let mut tries = 0;
        let mut lost = 0;
        loop {
            retried(&mut tries);
            let guard = &pin();
            self.store.help_announced(guard);
            let dir = self.store.dir(guard);
            if lost >= ANNOUNCE_AFTER && dir.is_some() {
                let ticket = *ticket.get_or_insert_with(|| self.store.ticket());
                return self.announced(a, b, m, f, ticket, lost, guard);
            }
            let w = match dir {
                Some(dir) => match Window::for_write(&self.store, dir, a, b, m, guard) {
                    Ok(w) => w,
                    Err(busy) => {
                        // A change in flight in the window: finish it, then read again.
                        self.store.help_other(busy.0, busy.1, guard);
                        continue;
                    }
                },
                None => Window::empty(),
            };
            let (publish, answer) = match prepare(&self.store, &w, dir, &mut m, &f) {
                Prepared::Again => continue,
                Prepared::Change(publish, answer) => (publish, answer),
                Prepared::Answer(answer) => {
                    // A deliberately broken protocol for the model checker to catch (never
                    // built normally): trust an answer that changes nothing without reading
                    // its window again.
                    if cfg!(extent_cache_broken = "no_confirm")
                        || w.confirm(&self.store, dir, guard)
                    {
                        note_retries(lost);
                        return answer;
                    }
                    lost += 1;
                    retry_hint();
                    continue;
                }
            };
            match self.store.publish(dir, publish, &mut ticket, guard) {
                Outcome::Committed => {
                    note_retries(lost);
                    return Ok(answer);
                }
                Outcome::Stale => {
                    lost += 1;
                    // A deliberately broken protocol for the checks to catch (never built
                    // normally): take a fresh ticket on every retry.
                    if cfg!(extent_cache_broken = "renew_ticket") {
                        ticket = None;
                    }
                    retry_hint();
                }
            }
        }
    }
}

impl<M: Mapping> ExtentCache<M> {
    /// Runs `f` on the window around `[a, b]` (widened by `m`, what the lost attempts learned)
    /// as an announced change (`Store::announce`), after `lost` lost attempts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn announced<R, F>(
        &self,
        a: u64,
        b: u64,
        m: Margin,
        f: F,
        ticket: u64,
        lost: u64,
        guard: &Guard,
    ) -> Result<R, Error<M>>
    where
        F: Fn(&Window<'_, M>) -> Plan<M, R> + Send + Sync + 'static,
        R: Clone + Send + Sync + 'static,
    {
        let op = Box::new(Announced { a, b, m, f });
        let (answer, attempts) = self.store.announce(op, ticket, guard);
        note_retries(lost + attempts as u64);
        answer
    }
}

/// One planned attempt of an operation on a window.
enum Prepared<M, R> {
    /// The window was too narrow, or changed under the plan: read again.
    Again,
    /// A change to publish, and the answer once it commits.
    Change(Publish<M>, R),
    /// An answer that changes nothing; it holds if the window still reads the same.
    Answer(Result<R, Error<M>>),
}

/// Plans `f` on `w` (read from `dir`) and rebuilds the window's pages. Widens `m` when the
/// plan or the rebuild needs more of the map. Inlined, so that the change is built where the
/// caller keeps it rather than copied there.
#[inline(always)]
fn prepare<M: Mapping, R>(
    store: &Store<M>,
    w: &Window<'_, M>,
    dir: Option<&Dir<M>>,
    m: &mut Margin,
    f: &impl Fn(&Window<'_, M>) -> Plan<M, R>,
) -> Prepared<M, R> {
    let planned = match f(w) {
        Err(PlanError::Edge) => {
            m.widen(w);
            return Prepared::Again;
        }
        Err(PlanError::Api(e)) => return Prepared::Answer(Err(e)),
        Ok(p) if p.change.is_empty() => return Prepared::Answer(Ok(p.answer)),
        Ok(p) => p,
    };
    match page::rebuild(
        &w.parts(),
        w.bound(),
        w.whole(dir),
        &planned.change,
        store.shape(),
    ) {
        Ok(rebuilt) => Prepared::Change(
            Publish {
                read: w.read(),
                rebuilt,
                bound: w.bound(),
                delta: Delta::of(&planned.change),
            },
            planned.answer,
        ),
        Err(widen) => {
            m.widen_both(widen);
            Prepared::Again
        }
    }
}

/// An operation as data, for announcing: the window it reads and its plan.
struct Announced<F> {
    a: u64,
    b: u64,
    /// The margin the lost attempts widened the window to: each attempt starts there.
    m: Margin,
    f: F,
}

impl<M, R, F> Op<M> for Announced<F>
where
    M: Mapping,
    F: Fn(&Window<'_, M>) -> Plan<M, R> + Send + Sync,
    R: Send + Sync + 'static,
{
    fn attempt(&self, store: &Store<M>, guard: &Guard) -> (Publish<M>, Answer) {
        let mut m = self.m;
        loop {
            let dir = store.dir(guard);
            let Some(d) = dir else {
                unreachable!(
                    "a change is announced only once the map has a directory, which it keeps"
                );
            };
            let w = match Window::for_write(store, d, self.a, self.b, m, guard) {
                Ok(w) => w,
                Err(busy) => {
                    store.help_other(busy.0, busy.1, guard);
                    continue;
                }
            };
            let (publish, answer): (_, Result<R, Error<M>>) =
                match prepare(store, &w, dir, &mut m, &self.f) {
                    Prepared::Again => continue,
                    Prepared::Change(publish, answer) => (publish, Ok(answer)),
                    // Nothing to change: claim the window as it is, so that the commit is the
                    // instant the answer holds.
                    Prepared::Answer(answer) => (unchanged(&w), answer),
                };
            return (publish, Box::new(answer));
        }
    }
}

/// A change that claims the slots of `w` and leaves them as they are.
fn unchanged<M: Mapping>(w: &Window<'_, M>) -> Publish<M> {
    let read = w.read();
    Publish {
        rebuilt: page::Rebuilt::InPlace(read.iter().map(|_| None).collect()),
        read,
        bound: w.bound(),
        delta: Delta::default(),
    }
}

#[cfg(all(test, loom))]
mod loom_hooks {
    use super::*;
    use crate::Extent;
    use crate::cache::around;
    use crate::plan;

    impl ExtentCache<crate::extent::BlockMapping> {
        /// Announces `replace_range(new, false)` and stops, as if its thread were descheduled
        /// right after the announcement went up. Returns the announcement.
        pub(crate) fn announce_stalled_replace_range(&self, new: Extent) -> usize {
            let (a, b) = around(new.start().saturating_sub(1), new.end());
            let op = Box::new(Announced {
                a,
                b,
                m: Margin::default(),
                f: move |w: &Window<'_, _>| plan::replace_range(w, new, false),
            });
            let guard = &pin();
            self.store.install(op, self.store.ticket(), guard) as usize
        }

        /// Lets a change stopped by [`announce_stalled_replace_range`] finish.
        pub(crate) fn finish_announced(&self, ann: usize) -> Result<(), Error> {
            let guard = &pin();
            // SAFETY: from `install`, finished once (the models call this once per announcement).
            let (answer, _): (Result<Extent, Error>, _) =
                unsafe { self.store.finish(ann as *mut _, guard) };
            answer.map(drop)
        }

        /// `replace_range(new, false)` announced from the start, as if it had lost
        /// [`ANNOUNCE_AFTER`] times already.
        pub(crate) fn announced_replace_range(&self, new: Extent) -> Result<(), Error> {
            let ann = self.announce_stalled_replace_range(new);
            self.finish_announced(ann)
        }

        /// Starts a `replace_range` whose window spans several pages and stops it after `claims`
        /// claims, as if its thread were descheduled forever. Returns the stalled descriptor, or
        /// `None` when the change needs no descriptor.
        pub(crate) fn stall_replace_range(&self, new: Extent, claims: usize) -> Option<usize> {
            let (a, b) = around(new.start().saturating_sub(1), new.end());
            let guard = &pin();
            let mut m = Margin::default();
            loop {
                let dir = self.store.dir(guard)?;
                let Ok(w) = Window::for_write(&self.store, dir, a, b, m, guard) else {
                    return None;
                };
                let planned = match plan::replace_range(&w, new, false) {
                    Err(PlanError::Edge) => {
                        m.widen(&w);
                        continue;
                    }
                    Err(PlanError::Api(_)) => return None,
                    Ok(p) => p,
                };
                let rebuilt = page::rebuild(
                    &w.parts(),
                    w.bound(),
                    w.whole(Some(dir)),
                    &planned.change,
                    self.store.shape(),
                )
                .ok()?;
                if w.leaves.len() < 2 {
                    return None;
                }
                let publish = Publish {
                    read: w.read(),
                    rebuilt,
                    bound: w.bound(),
                    delta: Delta::of(&planned.change),
                };
                return Some(self.store.publish_stalled(publish, claims, guard));
            }
        }

        /// Whether every slot of the current directory holds a page. True whenever no
        /// operation is running: an operation's owner releases every slot its change claimed
        /// (or swaps a forwarded run out of the directory) before it returns, and a helper
        /// undoes a claim that landed after the decision.
        pub(crate) fn settled(&self) -> bool {
            let guard = &pin();
            let Some(dir) = self.store.dir(guard) else {
                return true;
            };
            dir.slots().all(|slot| {
                // SAFETY: the directory holds the slot; see `Dir::slot`.
                let slot = unsafe { &*slot };
                matches!(self.store.word(slot, guard), crate::store::Word::Page(_))
            })
        }

        /// The directory as text (for model failures).
        pub(crate) fn dump(&self) -> String {
            let guard = &pin();
            let Some(dir) = self.store.dir(guard) else {
                return "no dir".into();
            };
            let mut out = String::new();
            for (i, p) in dir
                .walk(dir.first(), dir.right(dir.first(), dir.len()))
                .enumerate()
            {
                let slot = dir.slot(p);
                let w = match self.store.word(slot, guard) {
                    crate::store::Word::Page(p) => format!(
                        "page {:?}",
                        p.items()
                            .iter()
                            .map(|i| (i.ext.start(), i.ext.end()))
                            .collect::<Vec<_>>()
                    ),
                    crate::store::Word::Desc(d) => format!("desc {:?}", d.status()),
                };
                out += &format!("[{} key {}: {}] ", i, dir.key(p), w);
            }
            out
        }

        /// Lets a stalled change run to its end.
        pub(crate) fn resume(&self, stalled: usize) {
            self.store.resume(stalled, &pin());
        }
    }
}
