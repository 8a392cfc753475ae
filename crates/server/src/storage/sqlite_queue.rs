//! The SQLite queue's write path: one connection owned by one thread.
//!
//! Through sqlx, every statement is a round trip between the async runtime and sqlx's worker
//! thread, so a group commit (begin, look up, insert, delete, commit) cost several thread
//! wake-ups, which at low rates, with few messages per batch, each message paid for. Here the queue
//! writer hands the whole batch over once and gets the result back once; the thread runs the
//! transaction with cached prepared statements, row by row, which SQLite does in microseconds.
//!
//! Everything else (reads, registrations, prekeys) still goes through the sqlx pool; SQLite's
//! write lock (`BEGIN IMMEDIATE` on both sides, with a busy timeout) keeps the two in turn.

use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Acknowledged, Committed, QueueBatch, StorageError, StoreOutcome};

/// A batch handed to the thread, and where its result goes.
struct Request {
    batch: QueueBatch,
    reply: oneshot::Sender<Result<Committed, StorageError>>,
}

/// The queue thread and the way to it.
#[derive(Debug)]
pub(crate) struct QueueThread {
    /// `None` once closed.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl QueueThread {
    /// Opens a connection to the (already migrated) database at `path` and starts the thread.
    pub(crate) fn open(path: &Path) -> Result<Self, StorageError> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(10))?;
        // WAL is a property of the database file (the pool set it); durability is per
        // connection: a commit is on disk before any sender hears "stored".
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "cache_size", -65_536)?;
        connection.pragma_update(None, "foreign_keys", true)?;
        // Enough for the handful of statements below, so none is ever prepared twice.
        connection.set_prepared_statement_cache_capacity(16);
        let (requests, inbox) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("sotto-queue".into())
            .spawn(move || serve(connection, &inbox))
            .map_err(StorageError::Thread)?;
        Ok(Self { requests: Mutex::new(Some(requests)), thread: Mutex::new(Some(thread)) })
    }

    /// Commits a batch on the thread.
    pub(crate) async fn commit(&self, batch: QueueBatch) -> Result<Committed, StorageError> {
        let (reply, answer) = oneshot::channel();
        {
            let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let sender = requests.as_ref().ok_or(StorageError::Closed)?;
            sender.send(Request { batch, reply }).map_err(|_| StorageError::Closed)?;
        }
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Stops taking batches, lets the thread finish those it has, and waits for it.
    pub(crate) async fn close(&self) {
        drop(self.requests.lock().unwrap_or_else(|e| e.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The thread: one batch at a time, until every sender is gone.
fn serve(mut connection: Connection, inbox: &mpsc::Receiver<Request>) {
    // What the connection's `synchronous` is set to (FULL when opened).
    let mut flushing = true;
    while let Ok(Request { batch, reply }) = inbox.recv() {
        let result = commit(&mut connection, &mut flushing, &batch)
            .map(|(outcomes, acknowledged)| Committed {
                stores: batch.stores,
                outcomes,
                acknowledged,
            })
            .map_err(StorageError::from);
        // The writer may have given up waiting (shutdown); the commit stands either way.
        let _ = reply.send(result);
    }
    tracing::debug!("queue thread stopped");
}

/// One transaction for the whole batch; on any error it rolls back and nothing is applied.
///
/// A batch that stores nothing is committed without waiting for the disk: losing it (only a
/// power cut or a kernel crash can; the bytes are in the operating system once the commit
/// returns) brings acknowledged messages back, and clients drop a message id they already have.
/// The next batch that stores something flushes it with its own commit. At low rates this
/// saves a flush for many batches, and the flush is most of a message's latency. The mode is
/// set before the transaction, so a batch that stores is never committed without its flush.
fn commit(
    connection: &mut Connection,
    flushing: &mut bool,
    batch: &QueueBatch,
) -> rusqlite::Result<(Vec<StoreOutcome>, Vec<Acknowledged>)> {
    let flush = !batch.stores.is_empty();
    if flush != *flushing {
        connection.pragma_update(None, "synchronous", if flush { "FULL" } else { "NORMAL" })?;
        *flushing = flush;
    }
    commit_in_transaction(connection, batch)
}

fn commit_in_transaction(
    connection: &mut Connection,
    batch: &QueueBatch,
) -> rusqlite::Result<(Vec<StoreOutcome>, Vec<Acknowledged>)> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.stores.len());
    let mut acknowledged = Vec::with_capacity(batch.acks.len());
    {
        // A resend (same sender and client id) hits the unique index and inserts nothing; its
        // first copy's id is looked up, which only happens for duplicates.
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (recipient, sender, client_id, envelope, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sender, client_id) DO NOTHING",
        )?;
        let mut first_copy =
            tx.prepare_cached("SELECT id FROM messages WHERE sender = ?1 AND client_id = ?2")?;
        for message in &batch.stores {
            let inserted = insert.execute(params![
                message.recipient,
                message.sender,
                message.client_id,
                message.envelope.get(),
                message.created_at,
            ])?;
            outcomes.push(if inserted == 1 {
                StoreOutcome::Stored(tx.last_insert_rowid())
            } else {
                StoreOutcome::Duplicate(
                    first_copy
                        .query_row(params![message.sender, message.client_id], |row| row.get(0))?,
                )
            });
        }
        let mut delete = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
        for id in &batch.deletes {
            delete.execute([id])?;
        }
        // Only the recipient's own messages: an acknowledgement of someone else's id is a no-op.
        let mut acknowledge = tx.prepare_cached(
            "DELETE FROM messages WHERE id = ?1 AND recipient = ?2 RETURNING sender, client_id",
        )?;
        for (recipient, id) in &batch.acks {
            let row = acknowledge
                .query_row(params![id, recipient], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some((sender, client_id)) = row {
                acknowledged.push(Acknowledged {
                    id: *id,
                    sender,
                    client_id,
                    recipient: recipient.clone(),
                });
            }
        }
    }
    tx.commit()?;
    Ok((outcomes, acknowledged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::NewMessage;

    fn migrated_connection(dir: &tempfile::TempDir) -> Connection {
        let connection = Connection::open(dir.path().join("queue.db")).unwrap();
        connection.pragma_update(None, "journal_mode", "WAL").unwrap();
        connection.execute_batch(include_str!("../../migrations/sqlite/0001_init.sql")).unwrap();
        connection
            .execute_batch(include_str!("../../migrations/sqlite/0002_directed_contacts.sql"))
            .unwrap();
        connection
    }

    fn synchronous(connection: &Connection) -> i64 {
        connection.pragma_query_value(None, "synchronous", |row| row.get(0)).unwrap()
    }

    fn message(client_id: &str) -> NewMessage {
        NewMessage {
            recipient: "bob".into(),
            sender: "alice".into(),
            client_id: client_id.into(),
            envelope: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            created_at: 1,
        }
    }

    /// A batch that stores is committed with the flush (FULL = 2), whatever came before; only
    /// a batch that merely deletes goes without (NORMAL = 1).
    #[test]
    fn only_batches_that_store_nothing_skip_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut connection = migrated_connection(&dir);
        connection.pragma_update(None, "synchronous", "FULL").unwrap();
        let mut flushing = true;

        let stores = QueueBatch { stores: vec![message("a")], ..QueueBatch::default() };
        let (outcomes, _) = commit(&mut connection, &mut flushing, &stores).unwrap();
        assert_eq!(synchronous(&connection), 2);
        let StoreOutcome::Stored(id) = outcomes[0] else { panic!("stored: {outcomes:?}") };

        let acks = QueueBatch { acks: vec![("bob".into(), id)], ..QueueBatch::default() };
        let (_, acknowledged) = commit(&mut connection, &mut flushing, &acks).unwrap();
        assert_eq!(acknowledged.len(), 1);
        assert_eq!(synchronous(&connection), 1);

        let mixed =
            QueueBatch { stores: vec![message("b")], deletes: vec![id], ..QueueBatch::default() };
        commit(&mut connection, &mut flushing, &mixed).unwrap();
        assert_eq!(synchronous(&connection), 2);
    }
}
