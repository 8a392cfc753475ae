//! SQLite storage: WAL mode, `synchronous = FULL` for the pool (a commit is on disk when it
//! returns; the queue's own connection flushes separately, see `sqlite_queue`), write
//! transactions started with `BEGIN IMMEDIATE` so concurrent writers queue on the busy timeout
//! instead of failing on a lock upgrade.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::shared::{self, to_i64, to_u32, to_u64};
use super::sqlite_queue::{QueueThread, RESERVE_MESSAGE_IDS};
use super::{
    Acknowledged, ClaimedBundle, Committed, MessageStatus, NewMessage, NewUser, OneTimePrekeyStock,
    PrekeyUpload, QueueBatch, QueuedMessage, Storage, StorageError, StoreOutcome, StoredIdentity,
    StoredOneTimePrekey, StoredSignedPrekey, fixed_chunks,
};

/// The SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    /// Connections; writes serialise on SQLite's single writer lock.
    pool: SqlitePool,
    /// The queue writer's own connection on its own thread (file databases; an in-memory
    /// database is private to the pool's connection, so its queue goes through the pool).
    queue: Option<Arc<QueueThread>>,
}

fn migrator() -> Migrator {
    shared::migrator(&[
        (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
        (
            2,
            "directed contacts",
            include_str!("../../migrations/sqlite/0002_directed_contacts.sql"),
        ),
        (
            3,
            "relay message ids",
            include_str!("../../migrations/sqlite/0003_relay_message_ids.sql"),
        ),
    ])
}

impl SqliteStorage {
    /// Opens (creating when missing) the database at `url` (`sqlite:PATH` or `sqlite::memory:`)
    /// and migrates it.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // The queue churns: a larger page cache (64 MiB) and memory-mapped reads spare the
            // read system calls on the hot pages.
            .pragma("cache_size", "-65536")
            .pragma("mmap_size", "268435456")
            .foreign_keys(true);
        let mut pool_options = SqlitePoolOptions::new().max_connections(4);
        if in_memory {
            // An in-memory database lives only while a connection holds it.
            pool_options = pool_options.min_connections(1).idle_timeout(None).max_lifetime(None);
        }
        let path = options.get_filename().to_owned();
        let pool = pool_options.connect_with(options).await?;
        migrator().run(&pool).await?;
        let queue = if in_memory { None } else { Some(Arc::new(QueueThread::open(&path)?)) };
        Ok(Self { pool, queue })
    }

    /// The queue writer's group commit: on the queue thread's connection when there is one.
    async fn commit_queue(&self, batch: QueueBatch) -> Result<Committed, StorageError> {
        match &self.queue {
            Some(queue) => queue.commit(batch).await,
            None => self.commit_with_pool(batch).await,
        }
    }

    /// Message ids handed out before storing: the queue connection's (see
    /// [`QueueThread::take_ids`]); none without one (an in-memory database).
    fn take_queue_ids(&self, count: usize) -> Option<std::ops::Range<i64>> {
        self.queue.as_ref()?.take_ids(count)
    }

    /// Whether the queue has its own connection (a file database), which hands out ids.
    fn has_own_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Releases the queue connection's page cache, off the runtime (it waits for a running
    /// commit).
    async fn release_queue_memory(&self) {
        if let Some(queue) = self.queue.clone() {
            let _ = tokio::task::spawn_blocking(move || queue.release_memory()).await;
        }
    }

    /// The queue's part of the health check: a failed flush leaves the relay refusing every
    /// message until it restarts, so it must not look healthy.
    fn queue_health(&self) -> Result<(), StorageError> {
        match &self.queue {
            Some(queue) if queue.flush_failed() => Err(StorageError::Flush(std::io::Error::other(
                "an earlier flush of the write-ahead log failed; restart the relay",
            ))),
            _ => Ok(()),
        }
    }

    /// Lets the queue thread finish what it was given, then stops it.
    async fn close_queue(&self) {
        if let Some(queue) = &self.queue {
            queue.close().await;
        }
    }

    /// The pool, for tests that inspect the database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteStorage {
    /// Inserts fresh messages and returns their ids, reserved in `message_ids` in the same
    /// transaction (past any block the queue thread holds, which lies below `reserved_end`).
    async fn insert_chunk(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        chunk: &[&NewMessage],
    ) -> Result<Vec<i64>, StorageError> {
        let count = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        let first: i64 =
            sqlx::query_scalar(RESERVE_MESSAGE_IDS).bind(count).fetch_one(&mut **tx).await?;
        let ids: Vec<i64> = (first..first + count).collect();
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (id, recipient, sender, client_id, envelope, created_at) ",
        );
        insert.push_values(chunk.iter().zip(&ids), |mut row, (message, id)| {
            row.push_bind(id)
                .push_bind(&message.recipient)
                .push_bind(&message.sender)
                .push_bind(&message.client_id)
                .push_bind(message.envelope.get())
                .push_bind(message.created_at);
        });
        insert.build().execute(&mut **tx).await?;
        Ok(ids)
    }
}

super::shared::impl_storage!(
    SqliteStorage,
    Sqlite,
    begin = "BEGIN IMMEDIATE",
    claim_one_time_prekey = "DELETE FROM one_time_prekeys WHERE user_id = $1 AND key_id = \
         (SELECT key_id FROM one_time_prekeys WHERE user_id = $1 ORDER BY key_id LIMIT 1) \
         RETURNING key_id, public_key",
    // `BEGIN IMMEDIATE` already takes the write lock: nothing more to lock.
    lock_user = "SELECT user_id FROM users WHERE user_id = $1",
);
