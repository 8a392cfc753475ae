//! PostgreSQL storage, for several relay nodes sharing one database. Write transactions use
//! the default isolation (read committed) with row locks where they matter: a one-time prekey
//! is claimed with `FOR UPDATE SKIP LOCKED`, so concurrent claims on any node each get a
//! different key or none.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::shared::{self, to_i64, to_u32, to_u64};
use super::{
    Acknowledged, ClaimedBundle, Committed, MessageStatus, NewMessage, NewUser, OneTimePrekeyStock,
    PrekeyUpload, QueueBatch, QueuedMessage, Storage, StorageError, StoreOutcome, StoredIdentity,
    StoredOneTimePrekey, StoredSignedPrekey, fixed_chunks,
};

/// The PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    /// Connections.
    pool: PgPool,
}

fn migrator() -> Migrator {
    shared::migrator(&[
        (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
        (
            2,
            "directed contacts",
            include_str!("../../migrations/postgres/0002_directed_contacts.sql"),
        ),
    ])
}

/// The key of the transaction lock that orders the queue's commits across nodes (any constant
/// no other application on the database uses as an advisory lock key).
const QUEUE_ORDER_LOCK: i64 = 0x5077_0001;

impl PostgresStorage {
    /// Connects to `url` (`postgres://…`) and migrates the database (migrations take an
    /// advisory lock, so several nodes may start at once).
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Fail fast while the database is unreachable: senders get a retryable error
            // instead of waiting.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool, for tests that inspect the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl PostgresStorage {
    /// The queue writer's group commit: through the pool (every node writes to one database).
    ///
    /// Message ids come from a sequence when the rows are inserted, and each node's writer
    /// commits on its own, so without an order between their commits a later id could become
    /// visible before an earlier one: a catch-up that has read "after id N" would step over
    /// the earlier message for good, and that sender's messages would arrive out of order. A
    /// commit that stores messages therefore takes a transaction lock first, so that ids are
    /// taken and made visible one commit at a time, in order. Commits are group commits, so this
    /// orders batches (a few hundred a second), not messages.
    async fn commit_queue(&self, batch: QueueBatch) -> Result<Committed, StorageError> {
        if batch.stores.is_empty() {
            return self.commit_with_pool(batch).await;
        }
        let mut tx = self.pool.begin_with("BEGIN").await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(QUEUE_ORDER_LOCK)
            .execute(&mut *tx)
            .await?;
        Self::commit_in(tx, batch).await
    }

    /// Nothing to stop: the queue goes through the pool.
    async fn close_queue(&self) {}

    /// Nothing of the queue's own to check: it is the database's.
    fn queue_health(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Nothing to release: PostgreSQL's caches are the database server's.
    async fn release_queue_memory(&self) {}

    /// None: the sequence hands ids out inside the commit that stores them, and several nodes
    /// share it, so a message is always stored before it is pushed.
    fn take_queue_ids(&self, _count: usize) -> Option<std::ops::Range<i64>> {
        None
    }

    /// No queue connection of its own: the pool's.
    fn has_own_queue(&self) -> bool {
        false
    }

    /// Inserts fresh messages and returns their ids in the chunk's order (rows come back over
    /// the connection, which costs little here).
    async fn insert_chunk(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        chunk: &[&NewMessage],
    ) -> Result<Vec<i64>, StorageError> {
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO messages (recipient, sender, client_id, envelope, created_at) ",
        );
        insert.push_values(chunk, |mut row, message| {
            row.push_bind(&message.recipient)
                .push_bind(&message.sender)
                .push_bind(&message.client_id)
                .push_bind(message.envelope.get())
                .push_bind(message.created_at);
        });
        insert.push(" RETURNING id, sender, client_id");
        let rows = insert.build().fetch_all(&mut **tx).await?;
        let mut ids = HashMap::with_capacity(rows.len());
        for row in rows {
            let (id, sender, client_id): (i64, String, String) =
                (row.get(0), row.get(1), row.get(2));
            ids.insert((sender, client_id), id);
        }
        Ok(chunk
            .iter()
            .map(|m| ids.get(&(m.sender.clone(), m.client_id.clone())).copied().unwrap_or_default())
            .collect())
    }
}

super::shared::impl_storage!(
    PostgresStorage,
    Postgres,
    begin = "BEGIN",
    claim_one_time_prekey = "DELETE FROM one_time_prekeys WHERE (user_id, key_id) = \
         (SELECT user_id, key_id FROM one_time_prekeys WHERE user_id = $1 ORDER BY key_id \
          LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING key_id, public_key",
    lock_user = "SELECT user_id FROM users WHERE user_id = $1 FOR UPDATE",
);
