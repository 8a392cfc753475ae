//! Durable state: the key directory and the message queue, behind one trait with a SQLite
//! backend (the default) and a PostgreSQL backend (several nodes).
//!
//! Everything here is public keys and ciphertext. Keys are kept as the base64url text they
//! travel as, envelopes as the JSON text the sender sent, so serving them needs no re-encoding.
//! Times are Unix milliseconds.

mod postgres;
mod shared;
mod sqlite;
mod sqlite_queue;

use std::sync::Arc;

use async_trait::async_trait;

pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

/// A storage failure. Details are logged; clients only ever see "storage unavailable".
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database failed or could not be reached. Retrying later may work.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite queue writer's connection failed.
    #[error("database error: {0}")]
    Queue(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The SQLite queue thread could not be started.
    #[error("starting the queue thread: {0}")]
    Thread(std::io::Error),
    /// Flushing the SQLite write-ahead log to disk failed: what it held may not survive a
    /// power cut.
    #[error("flushing the write-ahead log: {0}")]
    Flush(std::io::Error),
    /// The storage was closed (the relay is shutting down).
    #[error("storage closed")]
    Closed,
    /// The database URL is not one this relay understands.
    #[error("unsupported database URL {0:?} (use sqlite:PATH, sqlite::memory: or postgres://…)")]
    UnsupportedUrl(String),
}

impl StorageError {
    /// Whether the storage was closed under the caller: the relay is stopping, so what needed
    /// it is moot rather than failed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed | Self::Database(sqlx::Error::PoolClosed))
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Someone already holds the user id.
    #[error("user id taken")]
    Taken,
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A user's public identity as stored (base64url text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    /// `IKs`.
    pub signing: String,
    /// `IKd`.
    pub dh: String,
    /// The binding signature.
    pub signature: String,
}

/// A signed prekey as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSignedPrekey {
    /// The owner's prekey id.
    pub id: u32,
    /// The public key, base64url.
    pub key: String,
    /// Creation time, Unix seconds (as signed).
    pub created_at: u64,
    /// The signature, base64url.
    pub signature: String,
}

/// A one-time prekey as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOneTimePrekey {
    /// The owner's prekey id.
    pub id: u32,
    /// The public key, base64url.
    pub key: String,
}

/// A registration, already verified.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The normalised user id.
    pub user_id: String,
    /// Its identity.
    pub identity: StoredIdentity,
    /// Its first signed prekey.
    pub signed_prekey: StoredSignedPrekey,
    /// Its first one-time prekeys.
    pub one_time_prekeys: Vec<StoredOneTimePrekey>,
    /// When it registered.
    pub now: i64,
}

/// What a bundle request hands out. The one-time prekey, if any, is gone from the store.
#[derive(Debug, Clone)]
pub struct ClaimedBundle {
    /// The user's identity.
    pub identity: StoredIdentity,
    /// The current signed prekey.
    pub signed_prekey: StoredSignedPrekey,
    /// One one-time prekey, consumed by this claim.
    pub one_time_prekey: Option<StoredOneTimePrekey>,
    /// How many one-time prekeys remain after this claim.
    pub remaining: usize,
}

/// The one-time prekeys the relay holds for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OneTimePrekeyStock {
    /// How many are left.
    pub held: usize,
    /// The lowest id left. Bundles hand out the lowest first, so every lower id the owner
    /// uploaded has been handed out; its owner keeps those private keys only a while.
    pub lowest_id: Option<u32>,
}

/// What an upload of one-time prekeys did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrekeyUpload {
    /// How many of the upload, from its start, were kept; the rest were over the cap.
    pub kept: usize,
    /// What the user holds now.
    pub stock: OneTimePrekeyStock,
}

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Its id when the relay took one before storing it ([`Storage::take_message_ids`]: the
    /// message was pushed to its recipient first, see `delivery`'s write-behind); `None`
    /// lets the commit give it the next id. Only a backend that hands out ids is given one.
    pub id: Option<i64>,
    /// The recipient's user id.
    pub recipient: String,
    /// The authenticated sender.
    pub sender: String,
    /// The sender's id for this message; a resend with the same id is stored once.
    pub client_id: String,
    /// The envelope JSON, as sent (checked, never re-encoded).
    pub envelope: Box<serde_json::value::RawValue>,
    /// When the relay received it.
    pub created_at: i64,
}

/// What storing one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored now, with this id.
    Stored(i64),
    /// The same sender and client id were stored before, with this id.
    Duplicate(i64),
}

impl StoreOutcome {
    /// The message's id either way.
    pub fn id(self) -> i64 {
        match self {
            StoreOutcome::Stored(id) | StoreOutcome::Duplicate(id) => id,
        }
    }
}

/// What the client id of a queued message starts with once its sender's id has been
/// registered anew (`sotto admin release-user`, then a new registration): the message stays
/// for its recipient, but it is not the new holder's, who must learn nothing of it. Nobody is
/// told of its delivery, and a status request for it answers as for a message never sent. A
/// client id a sender gives is base64url, so it never starts with `~`; the rest of the mark is
/// the registration's time, so marks made for different holders never collide on the
/// (sender, client id) key. The SQL that looks for it spells it `'~%'`.
pub fn earlier_holder_mark(registered_at: i64) -> String {
    format!("~{registered_at}~")
}

/// Whether a message's client id says an earlier holder of its sender's id sent it
/// ([`earlier_holder_mark`]).
pub fn sent_by_earlier_holder(client_id: &str) -> bool {
    client_id.starts_with('~')
}

/// One group commit of the queue writer: messages to store, acknowledged messages to delete.
#[derive(Debug, Default)]
pub struct QueueBatch {
    /// Messages to store, de-duplicated on (sender, client id).
    pub stores: Vec<NewMessage>,
    /// Acknowledged messages the writer has already matched to their recipients.
    pub deletes: Vec<i64>,
    /// `(recipient, id)` acknowledgements still to match, as [`Storage::acknowledge`] does.
    pub acks: Vec<(String, i64)>,
    /// `(sender, registered_at)` of ids registered anew: what the sender's earlier holder sent
    /// before then and is still queued is marked ([`earlier_holder_mark`]). The registration
    /// marked what was committed before it; this, in the queue writer's order, marks what the
    /// writer committed between the registration and hearing of it.
    pub earlier_holders: Vec<(String, i64)>,
}

impl QueueBatch {
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
            && self.deletes.is_empty()
            && self.acks.is_empty()
            && self.earlier_holders.is_empty()
    }
}

/// What a committed [`QueueBatch`] did. The messages come back so the writer can push them
/// without having copied them.
#[derive(Debug, Default)]
pub struct Committed {
    /// The batch's messages, in order.
    pub stores: Vec<NewMessage>,
    /// What storing each did, in the same order.
    pub outcomes: Vec<StoreOutcome>,
    /// The acknowledgements of `acks` that matched a queued message of their recipient.
    pub acknowledged: Vec<Acknowledged>,
    /// Of `deletes`, those whose sender must not be told of the delivery: gone already
    /// (expired, or deleted with their recipient's id when it was registered anew), or sent by
    /// an earlier holder of the sender's id ([`sent_by_earlier_holder`]). The writer matched
    /// them from memory, which cannot know either.
    pub withheld: Vec<i64>,
    /// When the batch is on disk. The batch is visible (readable, deliverable) as soon as it
    /// is committed; a sender may only hear "stored" once this resolves.
    pub durable: Durable,
}

/// When a committed batch is on disk: at once for backends whose commit waits for the disk,
/// later for the SQLite queue, whose flushes run beside the next commits.
#[derive(Debug, Default)]
pub struct Durable(Option<tokio::sync::oneshot::Receiver<Result<(), std::io::ErrorKind>>>);

impl Durable {
    /// Already on disk.
    pub fn now() -> Self {
        Self(None)
    }

    /// On disk once `flushed` says so.
    pub(crate) fn after(
        flushed: tokio::sync::oneshot::Receiver<Result<(), std::io::ErrorKind>>,
    ) -> Self {
        Self(Some(flushed))
    }

    /// Waits until the batch is on disk, or the flush failed.
    pub async fn wait(self) -> Result<(), StorageError> {
        let Some(flushed) = self.0 else { return Ok(()) };
        match flushed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(kind)) => Err(StorageError::Flush(kind.into())),
            Err(_) => Err(StorageError::Closed),
        }
    }
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Its id.
    pub id: i64,
    /// Who sent it.
    pub sender: String,
    /// The envelope JSON.
    pub envelope: String,
    /// When the relay received it.
    pub created_at: i64,
}

/// A message acknowledged by its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// Its id.
    pub id: i64,
    /// Who sent it, to be told.
    pub sender: String,
    /// The sender's id for it.
    pub client_id: String,
    /// Who acknowledged it.
    pub recipient: String,
}

/// Where a sent message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Still queued.
    Pending,
    /// No longer queued: its recipient acknowledged it (or, after the time to live, it expired
    /// undelivered). The relay keeps nothing of delivered messages to tell the two apart.
    Delivered,
}

/// The relay's durable state.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Whether the database answers.
    async fn health(&self) -> Result<(), StorageError>;

    /// Claims user ids in one transaction (one commit for the lot). `true` for each claim that
    /// succeeded; `false` for an id already held, or claimed earlier in the same batch. Of two
    /// concurrent claims of one id exactly one succeeds.
    async fn register_users(&self, users: &[NewUser]) -> Result<Vec<bool>, StorageError>;

    /// Claims one user id.
    async fn register_user(&self, user: &NewUser) -> Result<(), RegisterError> {
        match self.register_users(std::slice::from_ref(user)).await?.as_slice() {
            [true] => Ok(()),
            _ => Err(RegisterError::Taken),
        }
    }

    /// A user's identity, if registered.
    async fn identity(&self, user_id: &str) -> Result<Option<StoredIdentity>, StorageError>;

    /// The user's bundle, consuming exactly one one-time prekey when any are left.
    async fn claim_bundle(&self, user_id: &str) -> Result<Option<ClaimedBundle>, StorageError>;

    /// Adds one-time prekeys (ids already present are ignored), keeping at most `max_stored`:
    /// the upload's first keys, as many as there is room for.
    async fn add_one_time_prekeys(
        &self,
        user_id: &str,
        keys: &[StoredOneTimePrekey],
        max_stored: usize,
    ) -> Result<PrekeyUpload, StorageError>;

    /// Replaces the user's signed prekey.
    async fn set_signed_prekey(
        &self,
        user_id: &str,
        prekey: &StoredSignedPrekey,
    ) -> Result<(), StorageError>;

    /// How many one-time prekeys the user has left, and the lowest id among them.
    async fn one_time_prekey_stock(
        &self,
        user_id: &str,
    ) -> Result<OneTimePrekeyStock, StorageError>;

    /// Stores a batch of messages in one transaction, de-duplicating on (sender, client id).
    /// Outcomes are in the batch's order.
    async fn store_messages(&self, batch: &[NewMessage])
    -> Result<Vec<StoreOutcome>, StorageError>;

    /// The queue writer's group commit, in one transaction (one round of locking for a whole
    /// batch). On error nothing of the batch is applied. The batch is visible once this
    /// returns and on disk once [`Committed::durable`] resolves (at once where the commit
    /// itself waits for the disk).
    async fn commit_batch(&self, batch: QueueBatch) -> Result<Committed, StorageError>;

    /// A recipient's pending messages with ids above `after_id`, oldest first.
    async fn pending_messages(
        &self,
        recipient: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StorageError>;

    /// The pending messages of `recipients` with ids above `after_id` received before
    /// `created_before` (Unix ms), oldest first, at most `limit`, with their recipients. Read
    /// through the recipients' index, so messages queued for anyone else cost nothing.
    async fn pending_since(
        &self,
        recipients: &[&str],
        after_id: i64,
        created_before: i64,
        limit: usize,
    ) -> Result<Vec<(String, QueuedMessage)>, StorageError>;

    /// The highest message id so far (0 when the queue is empty).
    async fn last_message_id(&self) -> Result<i64, StorageError>;

    /// How many messages are pending for a recipient.
    async fn pending_count(&self, recipient: &str) -> Result<usize, StorageError>;

    /// For each of `users`, whether it is registered and how many messages are pending for it
    /// (0 for an unknown user), in `users`' order: two queries however many users.
    async fn recipients(&self, users: &[&str]) -> Result<Vec<(bool, usize)>, StorageError>;

    /// Acknowledges messages, deleting them: each `(recipient, id)` pair counts only if the
    /// message is that recipient's and still queued. Returns those that were.
    async fn acknowledge(
        &self,
        acks: &[(String, i64)],
        now: i64,
    ) -> Result<Vec<Acknowledged>, StorageError>;

    /// Hands out `count` message ids, in order and above every id handed out before, without
    /// storing anything, so that a message can be pushed before it is written (and, once its
    /// recipient acknowledges it, never written at all). `None` when the backend cannot do it
    /// at this instant without waiting (or at all: only the SQLite queue can); the messages
    /// are then stored first, as always. Ids are never handed out twice, even across a crash.
    fn take_message_ids(&self, count: usize) -> Option<std::ops::Range<i64>> {
        let _ = count;
        None
    }

    /// Whether [`Storage::take_message_ids`] can ever hand out ids here.
    fn takes_message_ids(&self) -> bool {
        false
    }

    /// The status of messages the caller sent.
    async fn message_status(
        &self,
        sender: &str,
        ids: &[i64],
    ) -> Result<Vec<(i64, MessageStatus)>, StorageError>;

    /// Records that each (sender, recipient) pair has exchanged at least one message, that way.
    /// Returns the pairs that were not recorded before.
    async fn add_contacts(
        &self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, StorageError>;

    /// The users `user_id` has written to: they are told when `user_id` comes and goes.
    async fn written_to(&self, user_id: &str) -> Result<Vec<String>, StorageError>;

    /// The users who have written to `user_id`: their presence is shown to `user_id`.
    async fn written_by(&self, user_id: &str) -> Result<Vec<String>, StorageError>;

    /// Drops undelivered messages received before `created_before`. Returns how many.
    async fn purge(&self, created_before: i64) -> Result<u64, StorageError>;

    /// Frees a user id: its keys, its undelivered messages and its contacts go (whoever
    /// registers the id next starts with no one's presence). Returns whether it existed.
    async fn release_user(&self, user_id: &str) -> Result<bool, StorageError>;

    /// Messages pending in total (for metrics).
    async fn total_pending(&self) -> Result<u64, StorageError>;

    /// Gives back memory kept only for speed (the SQLite queue connection's page cache), after
    /// a burst (`memory.rs`); nothing stored changes.
    async fn release_memory(&self);

    /// Closes the connections, waiting for running queries.
    async fn close(&self);
}

/// Opens the database named by `url`, creating it (SQLite) and running migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Storage>, StorageError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStorage::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStorage::open(url).await?))
    } else {
        Err(StorageError::UnsupportedUrl(url.to_owned()))
    }
}

/// Splits a batch into chunks of a few fixed sizes, so multi-row statements come in a handful
/// of shapes that stay in the prepared-statement cache.
pub(crate) fn fixed_chunks<T>(items: &[T]) -> Vec<&[T]> {
    const SIZES: [usize; 5] = [256, 64, 16, 4, 1];
    let mut chunks = Vec::new();
    let mut rest = items;
    for size in SIZES {
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            chunks.push(chunk);
            rest = tail;
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::fixed_chunks;

    #[test]
    fn chunks_cover_the_batch_in_fixed_sizes() {
        let items: Vec<u32> = (0..150).collect();
        let chunks = fixed_chunks(&items);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [64, 64, 16, 4, 1, 1]);
        let many: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = fixed_chunks(&many).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [256, 16, 16, 4, 4, 4]);
        let flat: Vec<u32> = chunks.concat();
        assert_eq!(flat, items);
        assert!(fixed_chunks::<u32>(&[]).is_empty());
    }
}
