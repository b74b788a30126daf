//! The embedded store's writer: every write of one database is queued, and
//! one thread at a time takes what is queued and runs it in **one** write
//! transaction with one commit (and, when a caller waits for durability,
//! one fsync). Concurrent callers so share a commit instead of each taking
//! redb's write lock, committing and waking the next in turn, which is
//! where a write-heavy load spent its time (thread hand-offs, and a commit
//! per call that rewrites the touched B-tree pages and the allocator state).
//!
//! Sharing a transaction needs care when one writer fails: its changes must
//! not be committed, and redb cannot undo part of a transaction. So the
//! transaction is dropped (nothing of it is written) and the others run
//! again in a new one, without the failed writer; its error stands, since
//! it saw exactly the writes committed before it. Writers that can run
//! again are `Fn`; a writer that can run only once (`FnOnce`) is only ever
//! the last of its batch, so a failure never needs to run it again (a
//! batch takes the first once-only writer in the queue and every writer
//! that can run again, up to its size).

use std::{
    any::Any,
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Weak},
};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use super::{EmbeddedDb, Shared};
use crate::{StoreError, StoreResult, internal};

/// Most writers in one transaction: a bound on the work a failure repeats
/// and on the time the first of them waits for the last.
const MOST_PER_BATCH: usize = 64;

pub(super) type Value = Box<dyn Any + Send>;
type Again = Box<dyn Fn(&WriteTransaction) -> StoreResult<Value> + Send>;
type Once = Box<dyn FnOnce(&WriteTransaction) -> StoreResult<Value> + Send>;

/// What a writer does in the transaction.
pub(super) enum Work {
    /// May run more than once (each run but the last is rolled back).
    Again(Again),
    /// Runs once: the last of its batch.
    Once(Option<Once>),
}

impl Work {
    pub(super) fn again<T: Send + 'static>(
        operation: impl Fn(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    ) -> Self {
        Work::Again(Box::new(move |txn| {
            operation(txn).map(|value| Box::new(value) as Value)
        }))
    }

    pub(super) fn once<T: Send + 'static>(
        operation: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    ) -> Self {
        Work::Once(Some(Box::new(move |txn| {
            operation(txn).map(|value| Box::new(value) as Value)
        })))
    }
}

/// One caller's write, waiting in the queue.
pub(super) struct Job {
    pub(super) work: Work,
    /// The caller returns only once this write is durable.
    pub(super) durable: bool,
    /// The caller's span, entered while its work runs.
    pub(super) span: tracing::Span,
    pub(super) reply: oneshot::Sender<StoreResult<Value>>,
}

#[derive(Default)]
pub(super) struct Queue {
    jobs: VecDeque<Job>,
    /// Whether a writer thread is draining the queue.
    draining: bool,
}

impl EmbeddedDb {
    /// Queues `job`, starting a writer thread unless one is draining.
    pub(super) fn submit(&self, job: Job) {
        let mut queue = self.queue();
        queue.jobs.push_back(job);
        if !queue.draining {
            queue.draining = true;
            let shared = Arc::downgrade(&self.shared);
            tokio::task::spawn_blocking(move || drain(&shared));
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open database, from a blocking thread (reopening it after an
    /// I/O failure goes through the same bounded path as every call).
    fn current_blocking(&self) -> StoreResult<Arc<Database>> {
        if !self
            .shared
            .io
            .failed
            .load(std::sync::atomic::Ordering::Acquire)
            && let Some(database) = self.current()
        {
            return Ok(database);
        }
        tokio::runtime::Handle::current().block_on(self.database())
    }

    /// Runs `jobs` in one transaction and commits it; a failed writer is
    /// answered its error and the others run again without it.
    fn run_batch(&self, database: &Database, mut jobs: Vec<Job>, answers: &mut Answers) {
        // Callers that stopped waiting (timed out, or dropped) are not run.
        jobs.retain(|job| !job.reply.is_closed());
        while !jobs.is_empty() {
            let durable = jobs.iter().any(|job| job.durable);
            let txn = database
                .begin_write()
                .map_err(internal)
                .and_then(|mut txn| {
                    txn.set_durability(if durable {
                        Durability::Immediate
                    } else {
                        Durability::None
                    })
                    .map_err(internal)?;
                    Ok(txn)
                });
            let txn = match txn {
                Ok(txn) => txn,
                Err(error) => return self.fail(jobs, &error, answers),
            };
            let mut values = Vec::with_capacity(jobs.len());
            let mut failed = None;
            for (at, job) in jobs.iter_mut().enumerate() {
                let _entered = job.span.enter();
                let ran = match &mut job.work {
                    Work::Again(operation) => catch_unwind(AssertUnwindSafe(|| operation(&txn))),
                    Work::Once(operation) => match operation.take() {
                        Some(operation) => catch_unwind(AssertUnwindSafe(|| operation(&txn))),
                        None => Ok(Err(StoreError::Internal(
                            "a once-only write was asked to run again".to_owned(),
                        ))),
                    },
                };
                match ran.unwrap_or_else(|_| {
                    Err(StoreError::Internal("a storage write panicked".to_owned()))
                }) {
                    Ok(value) => values.push(value),
                    Err(error) => {
                        failed = Some((at, error));
                        break;
                    }
                }
            }
            if let Some((at, error)) = failed {
                // Nothing of this transaction is written; the others run
                // again without the writer that failed.
                drop(txn);
                let job = jobs.remove(at);
                answers.push((job.reply, Err(self.disk_error(error))));
                continue;
            }
            let ticket = durable.then(|| self.ticket());
            match txn.commit() {
                Ok(()) => {
                    match ticket {
                        Some(ticket) => self.settle_durable(ticket),
                        None => {
                            self.committed();
                            self.flush_later();
                        }
                    }
                    for (job, value) in jobs.into_iter().zip(values) {
                        answers.push((job.reply, Ok(value)));
                    }
                }
                Err(error) => {
                    if let Some(ticket) = ticket {
                        self.settle_failed(ticket);
                    }
                    self.fail(jobs, &internal(error), answers);
                }
            }
            return;
        }
    }

    fn fail(&self, jobs: Vec<Job>, error: &StoreError, answers: &mut Answers) {
        let error = self.disk_error(error.clone());
        for job in jobs {
            answers.push((job.reply, Err(error.clone())));
        }
    }
}

/// Runs batches until the queue is empty. The database is held only while
/// a batch runs, and its callers are answered after that: a caller that
/// drops its last handle on hearing its answer closes the file at once (a
/// test or a restart reopens it right after). So whether another batch
/// follows is decided before answering, while the store is still held:
/// after the last answer this thread must not take hold of the store again
/// (it did, to look at the queue, and a reopen then found the file locked).
fn drain(shared: &Weak<Shared>) {
    loop {
        let (answers, more) = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let db = EmbeddedDb::on(shared);
            let batch = {
                let mut queue = db.queue();
                let batch = take_batch(&mut queue.jobs);
                if batch.is_empty() {
                    queue.draining = false;
                    return;
                }
                batch
            };
            let mut answers = Answers::with_capacity(batch.len());
            match db.current_blocking() {
                Ok(database) => {
                    // A panic in a writer fails its batch (the callers hear
                    // of it as the dropped reply), never the queue.
                    let ran = catch_unwind(AssertUnwindSafe(|| {
                        db.run_batch(&database, batch, &mut answers)
                    }));
                    if ran.is_err() {
                        tracing::error!(path = %db.shared.path.display(), "a storage write panicked; its batch failed");
                    }
                }
                Err(error) => {
                    for job in batch {
                        answers.push((job.reply, Err(error.clone())));
                    }
                }
            }
            let more = {
                let mut queue = db.queue();
                let more = !queue.jobs.is_empty();
                if !more {
                    queue.draining = false;
                }
                more
            };
            (answers, more)
        };
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        if !more {
            return;
        }
    }
}

type Answers = Vec<(oneshot::Sender<StoreResult<Value>>, StoreResult<Value>)>;

/// The next batch: queued writers in order, at most [`MOST_PER_BATCH`],
/// ending at the first that can run only once.
fn take_batch(queue: &mut VecDeque<Job>) -> Vec<Job> {
    // Every writer that can run again, in queue order, and the first
    // once-only one, last; later once-only writers keep their places for
    // the next batch. Writers waiting in the queue together were all
    // called before any was answered, so any order among them is one their
    // callers could have seen, and a once-only writer (a notification's
    // publication, a warehouse batch) no longer cuts short the batch of
    // everyone queued behind it.
    let mut batch = Vec::new();
    let mut once = None;
    let mut kept = VecDeque::new();
    while batch.len() + usize::from(once.is_some()) < MOST_PER_BATCH {
        let Some(job) = queue.pop_front() else { break };
        match job.work {
            Work::Again(_) => batch.push(job),
            Work::Once(_) if once.is_none() => once = Some(job),
            Work::Once(_) => kept.push_back(job),
        }
    }
    batch.extend(once);
    // What was passed over goes back first, ahead of what was not reached.
    while let Some(job) = kept.pop_back() {
        queue.push_front(job);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(once: bool, tag: u32) -> (Job, oneshot::Receiver<StoreResult<Value>>) {
        let (reply, answer) = oneshot::channel();
        let work = if once {
            Work::once(move |_| Ok(tag))
        } else {
            Work::again(move |_| Ok(tag))
        };
        let span = tracing::info_span!("job", tag);
        (
            Job {
                work,
                durable: true,
                span,
                reply,
            },
            answer,
        )
    }

    #[test]
    fn a_batch_takes_every_writer_that_can_run_again_and_the_first_once_only_one_last() {
        let mut queue = VecDeque::new();
        let mut answers = Vec::new();
        for (once, tag) in [
            (true, 1),
            (false, 2),
            (true, 3),
            (false, 4),
            (true, 5),
            (false, 6),
        ] {
            let (job, answer) = job(once, tag);
            queue.push_back(job);
            answers.push(answer);
        }
        let kinds = |jobs: &[Job]| -> Vec<bool> {
            jobs.iter()
                .map(|job| matches!(job.work, Work::Once(_)))
                .collect()
        };
        let batch = take_batch(&mut queue);
        assert_eq!(kinds(&batch), [false, false, false, true]);
        // The once-only writers passed over wait in their order.
        assert_eq!(kinds(queue.make_contiguous()), [true, true]);
        let next = take_batch(&mut queue);
        assert_eq!(kinds(&next), [true]);
        assert_eq!(queue.len(), 1);

        // A full batch stops at its size, the once-only writer included.
        let mut queue = VecDeque::new();
        for tag in 0..(MOST_PER_BATCH as u32 + 10) {
            queue.push_back(job(tag == 0, tag).0);
        }
        let batch = take_batch(&mut queue);
        assert_eq!(batch.len(), MOST_PER_BATCH);
        assert!(matches!(
            batch.last().map(|job| &job.work),
            Some(Work::Once(_))
        ));
        assert_eq!(queue.len(), 10);
    }
}
