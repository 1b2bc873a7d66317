//! Message inserts grouped into one write: when several sends are stored at
//! once, they go to the store as one `insert_many` instead of one insert
//! each, so a busy node pays the store's per-write cost (a round trip, a
//! transaction, an index update pass) once per group rather than once per
//! message.
//!
//! There is no background task. Each caller queues its message and tries to
//! become a writer; at most [`WRITERS`] batches are in flight. A writer takes
//! everything queued (up to [`MAX_BATCH`]), writes it, and hands every
//! message its own outcome: a duplicate key refuses that message alone
//! (`ordered: false`). A caller whose message is in someone else's batch
//! waits for its outcome, or becomes a writer itself when a slot frees up
//! and its message is still queued. When nothing else is in flight a
//! message is written at once, alone: batching adds no wait.
//!
//! A message whose sender goes away while it waits in the queue is not
//! written, as an insert not yet sent is not. A writer's future can be
//! dropped mid-write (its connection went away).
//! The messages it took then learn nothing; each of their callers looks for
//! its message by id and, if it is not there, writes it alone.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use mongodb::error::ErrorKind;
use mongodb::Collection;
use tokio::sync::{oneshot, Semaphore};

use super::mongo::{map_err, timed};
use super::{Message, StoreError, StoreResult};

/// Batches in flight at once, per node.
pub const WRITERS: usize = 4;
/// Most messages in one write.
pub const MAX_BATCH: usize = 64;

struct Queued {
    message: Message,
    done: oneshot::Sender<StoreResult<()>>,
}

#[derive(Default)]
struct Queue(Mutex<VecDeque<Queued>>);

impl Queue {
    fn push(&self, q: Queued) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push_back(q);
    }

    /// The next batch, oldest first. Messages whose sender went away while
    /// they waited are dropped unwritten, as an insert not yet sent is when
    /// its sender goes away.
    fn take(&self) -> Vec<Queued> {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        queue.retain(|q| !q.done.is_closed());
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }
}

/// The message inserts of one store handle (shared by its clones).
pub struct Inserts {
    queue: Queue,
    writers: Semaphore,
}

impl Default for Inserts {
    fn default() -> Self {
        Inserts { queue: Queue::default(), writers: Semaphore::new(WRITERS) }
    }
}

impl Inserts {
    /// Stores `message`, alone or with others queued at the same time.
    pub async fn insert(&self, messages: &Collection<Message>, message: &Message) -> StoreResult<()> {
        let (done, mut outcome) = oneshot::channel();
        self.queue.push(Queued { message: message.clone(), done });
        loop {
            let permit = tokio::select! {
                biased;
                result = &mut outcome => return settle(messages, message, result).await,
                permit = self.writers.acquire() => permit,
            };
            let Ok(writing) = permit else {
                // The semaphore is never closed; write alone if it were.
                return insert_one(messages, message).await;
            };
            let batch = self.queue.take();
            if batch.is_empty() {
                // Another writer took this message: its outcome is coming.
                drop(writing);
                return settle(messages, message, (&mut outcome).await).await;
            }
            write(messages, batch).await;
        }
    }
}

/// The outcome handed over, or, if its writer was dropped before handing it
/// over, what the store says.
async fn settle(
    messages: &Collection<Message>,
    message: &Message,
    result: Result<StoreResult<()>, oneshot::error::RecvError>,
) -> StoreResult<()> {
    match result {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("confab_store_batch_orphans_total").increment(1);
            let stored = timed("find_message", messages.find_one(bson::doc! {"_id": message.id})).await?;
            match stored {
                Some(_) => Ok(()),
                None => insert_one(messages, message).await,
            }
        }
    }
}

async fn insert_one(messages: &Collection<Message>, message: &Message) -> StoreResult<()> {
    timed("insert_message", messages.insert_one(message)).await.map(|_| ())
}

/// Writes a batch and hands each message its outcome.
async fn write(messages: &Collection<Message>, batch: Vec<Queued>) {
    metrics::histogram!("confab_store_insert_batch_size").record(batch.len() as f64);
    if batch.len() == 1 {
        if let Some(q) = batch.into_iter().next() {
            let _ = q.done.send(insert_one(messages, &q.message).await);
        }
        return;
    }
    let docs: Vec<&Message> = batch.iter().map(|q| &q.message).collect();
    let start = Instant::now();
    let result = messages.insert_many(docs).ordered(false).await;
    metrics::histogram!("confab_mongo_op_seconds", "op" => "insert_messages").record(start.elapsed().as_secs_f64());
    let outcomes = match result {
        Ok(_) => (0..batch.len()).map(|_| Ok(())).collect(),
        Err(e) => outcomes_of(e, batch.len()),
    };
    for (q, outcome) in batch.into_iter().zip(outcomes) {
        let _ = q.done.send(outcome);
    }
}

/// Per-message outcomes of a failed `insert_many`: a write error refuses
/// only the message it names (a duplicate key as [`StoreError::Duplicate`]);
/// any other failure refuses them all.
fn outcomes_of(e: mongodb::error::Error, n: usize) -> Vec<StoreResult<()>> {
    match &*e.kind {
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
            let mut out: Vec<StoreResult<()>> = (0..n).map(|_| Ok(())).collect();
            for w in failure.write_errors.iter().flatten() {
                if let Some(slot) = out.get_mut(w.index) {
                    *slot = Err(if w.code == 11000 {
                        StoreError::Duplicate
                    } else {
                        StoreError::Other(format!("insert refused: {} ({})", w.message, w.code).into())
                    });
                }
            }
            out
        }
        _ => (0..n).map(|_| Err(map_err(e.clone()))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(q: &Queue, seq: i64) -> oneshot::Receiver<StoreResult<()>> {
        let (done, rx) = oneshot::channel();
        q.push(Queued { message: Message { seq, ..Message::sample() }, done });
        rx
    }

    #[test]
    fn a_queue_hands_out_at_most_a_batch_in_order() {
        let q = Queue::default();
        let _waiting: Vec<_> = (0..(MAX_BATCH as i64 + 3)).map(|seq| queued(&q, seq)).collect();
        let first = q.take();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0].message.seq, 0);
        let rest = q.take();
        assert_eq!(rest.iter().map(|q| q.message.seq).collect::<Vec<_>>(), vec![64, 65, 66]);
        assert!(q.take().is_empty());
    }

    #[test]
    fn messages_whose_sender_went_away_are_not_written() {
        let q = Queue::default();
        let kept = queued(&q, 1);
        drop(queued(&q, 2));
        let _also_kept = queued(&q, 3);
        assert_eq!(q.take().iter().map(|q| q.message.seq).collect::<Vec<_>>(), vec![1, 3]);
        drop(kept);
    }
}
