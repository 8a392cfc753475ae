//! The local store: one SQLite file under the client's home folder, holding the identity,
//! prekeys, sessions, contacts, conversation counters, history and the outbox.
//!
//! The folder is made 0700 and the file 0600 before SQLite opens it (SQLite gives its WAL and
//! SHM files the database file's permissions). Everything that must change together when a
//! message is decrypted (session, contact, used prekey, counters, history) changes in one
//! transaction, committed before the relay is told the message was received.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sotto_protocol::prekeys::{OneTimePrekey, SignedPrekey};
use sotto_protocol::record::MessageDigest;
use sotto_protocol::wire::{self, PublicIdentityJson};
use sotto_protocol::{
    DhKeyPair, DhSecretKey, IdentityKeyPair, PublicIdentity, SessionRecord, UserId,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqliteConnection, SqlitePool};
use zeroize::Zeroizing;

/// The store's file name inside the home folder.
pub const DATABASE_FILE: &str = "sotto.db";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("local database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrating the database failed.
    #[error("local database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The home folder could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Stored data does not decode (damaged, or written by a newer version).
    #[error("local data is damaged: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The local identity and where it is registered.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// Our user id.
    pub user: UserId,
    /// The relay it is registered with.
    pub server: String,
    /// The keys.
    pub keys: IdentityKeyPair,
}

/// What we know about a contact's identity.
#[derive(Debug, Clone)]
pub struct Contact {
    /// Who.
    pub peer: UserId,
    /// The identity the user accepted (first seen, or trusted after a change).
    pub identity: PublicIdentity,
    /// Whether the user compared safety numbers and marked it verified.
    pub verified: bool,
    /// A different identity seen since and not yet accepted: sending is blocked meanwhile.
    pub pending: Option<PublicIdentity>,
}

/// What [`Store::accept_pending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The pending identity is now the accepted one.
    Accepted,
    /// No identity was pending.
    NothingPending,
    /// Another identity than the expected one is pending now: nothing changed.
    PendingChanged,
}

/// The columns [`message_from_row`] reads, in its order.
macro_rules! message_columns {
    () => {
        "id, peer, outgoing, body, counter, sent_at, received_at, server_id, status"
    };
}

/// A conversation's counters (PROTOCOL.md §7.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records we sent to the peer.
    pub sent: u64,
    /// Every record up to this counter has arrived.
    pub received_contiguous: u64,
    /// Counters that arrived above the contiguous prefix, ascending; at most
    /// [`MAX_RECEIVED_ABOVE`].
    pub received_above: Vec<u64>,
    /// Records below `received_contiguous` that never arrived and are no longer waited for
    /// (see [`MAX_RECEIVED_ABOVE`]): still counted by [`Counters::missing`].
    pub missing_for_good: u64,
    /// The counter and digest of the last record received (what our next record names).
    pub last_counter: u64,
    /// Digest of that record.
    pub last_digest: MessageDigest,
    /// The highest of our counters the peer says it received.
    pub peer_received: u64,
}

/// How many counters above a gap are remembered. A record that never arrives (withheld, or
/// lost with a device) would otherwise make every later arrival grow the list for good; past
/// this many, the gaps below the oldest ones kept are given up on: counted missing for good,
/// and a record that fills one later no longer withdraws it. The browser client's rule too.
pub const MAX_RECEIVED_ABOVE: usize = 1_000;

impl Counters {
    /// Records that the peer's record `counter` arrived.
    pub fn note_received(&mut self, counter: u64, digest: MessageDigest) {
        let at = self.received_above.partition_point(|&above| above < counter);
        if counter > self.received_contiguous && self.received_above.get(at) != Some(&counter) {
            self.received_above.insert(at, counter);
            self.advance_contiguous();
            // Only what is still above a gap once the prefix has advanced counts against the
            // cap: a record that fills the gap must not push out the one right after it.
            if self.received_above.len() > MAX_RECEIVED_ABOVE {
                // Give up on the gaps below the oldest counter kept: what lies between the
                // contiguous prefix and it, less the records that did arrive, is missing for
                // good.
                let first = self.received_above.len() - MAX_RECEIVED_ABOVE;
                let oldest_kept = self.received_above[first];
                self.missing_for_good += oldest_kept - 1 - self.received_contiguous - first as u64;
                self.received_contiguous = oldest_kept - 1;
                self.received_above.drain(..first);
                self.advance_contiguous();
            }
        }
        self.last_counter = counter;
        self.last_digest = digest;
    }

    /// Moves the contiguous prefix over the counters that now follow it.
    fn advance_contiguous(&mut self) {
        let mut taken = 0;
        // Checked: a peer's counter may be u64::MAX, past which nothing can follow.
        while let Some(next) = self.received_contiguous.checked_add(1)
            && self.received_above.get(taken) == Some(&next)
        {
            taken += 1;
            self.received_contiguous = next;
        }
        self.received_above.drain(..taken);
    }

    /// How many of the peer's records are missing: counters below the highest one seen that
    /// never arrived.
    pub fn missing(&self) -> u64 {
        let highest = self.received_above.last().copied().unwrap_or(self.received_contiguous);
        highest - self.received_contiguous - self.received_above.len() as u64
            + self.missing_for_good
    }

    /// How many of our records the peer has not confirmed receiving.
    pub fn unconfirmed(&self) -> u64 {
        self.sent.saturating_sub(self.peer_received)
    }
}

/// A message in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Local id.
    pub id: i64,
    /// The other party.
    pub peer: String,
    /// Whether we sent it.
    pub outgoing: bool,
    /// The text (none for a message that could not be decrypted).
    pub body: Option<String>,
    /// The sender's counter.
    pub counter: Option<u64>,
    /// When it was sent (sender's clock), Unix ms.
    pub sent_at: i64,
    /// When it was received, Unix ms.
    pub received_at: Option<i64>,
    /// The relay's id.
    pub server_id: Option<i64>,
    /// `sending`, `stored`, `delivered`, `unconfirmed` (the relay said delivered, the peer's
    /// later record says not received), `received` or `undecryptable`.
    pub status: String,
}

/// A conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The other party.
    pub peer: String,
    /// Messages not yet seen.
    pub unread: u64,
    /// The last message's text, if any.
    pub last: Option<String>,
    /// When the conversation last changed.
    pub updated_at: i64,
}

/// An outbox entry.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Our id for the message (sent to the relay for de-duplication).
    pub client_id: String,
    /// The recipient.
    pub peer: String,
    /// The history row.
    pub message_id: i64,
    /// The envelope, once encrypted.
    pub envelope: Option<String>,
}

/// The local store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Connections.
    pool: SqlitePool,
}

/// Migration runs before opening fails: another process upgrading the store at the same moment
/// can fail one.
const MIGRATION_ATTEMPTS: u64 = 5;

fn migrator() -> Migrator {
    let migration = |version, name: &str, sql: &'static str| {
        Migration::new(
            version,
            name.to_owned().into(),
            MigrationType::Simple,
            AssertSqlSafe(sql).into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(1, "init", include_str!("../migrations/0001_init.sql")),
        migration(
            2,
            "own record digests",
            include_str!("../migrations/0002_own_record_digests.sql"),
        ),
        migration(
            3,
            "signed prekey retirement",
            include_str!("../migrations/0003_signed_prekey_retirement.sql"),
        ),
        migration(
            4,
            "identity registered",
            include_str!("../migrations/0004_identity_registered.sql"),
        ),
        migration(
            5,
            "one-time prekey handed out",
            include_str!("../migrations/0005_one_time_prekey_handed_out.sql"),
        ),
        migration(
            6,
            "indexes for arrivals",
            include_str!("../migrations/0006_indexes_for_arrivals.sql"),
        ),
        migration(7, "saved by", include_str!("../migrations/0007_saved_by.sql")),
        migration(8, "missing for good", include_str!("../migrations/0008_missing_for_good.sql")),
    ])
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| StoreError::Io { path: path.to_owned(), source })
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> Result<(), StoreError> {
    Ok(())
}

fn identity_from_text(
    signing: &str,
    dh: &str,
    signature: &str,
) -> Result<PublicIdentity, StoreError> {
    PublicIdentity::try_from(&PublicIdentityJson {
        signing: signing.to_owned(),
        dh: dh.to_owned(),
        signature: signature.to_owned(),
    })
    .map_err(corrupt)
}

fn identity_text(identity: &PublicIdentity) -> PublicIdentityJson {
    PublicIdentityJson::from(identity)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating) the store in `home`.
    pub async fn open(home: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(home)
            .map_err(|source| StoreError::Io { path: home.to_owned(), source })?;
        restrict(home, 0o700)?;
        let path = home.join(DATABASE_FILE);
        if !path.exists() {
            std::fs::File::create(&path)
                .map_err(|source| StoreError::Io { path: path.clone(), source })?;
        }
        restrict(&path, 0o600)?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite:{}", path.display()))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
        // sqlx takes no lock around SQLite migrations: two processes opening an older store at
        // once (`sotto chat` beside `sotto recv` after an upgrade) can both start one, and the
        // second fails on what the first made ("duplicate column"), its transaction rolled
        // back. Another run reads what ran and goes on from there.
        let mut attempt = 1;
        while let Err(error) = migrator().run(&pool).await {
            if attempt == MIGRATION_ATTEMPTS {
                return Err(error.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            attempt += 1;
        }
        Ok(Self { pool })
    }

    /// Closes the store.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    // ---- identity and prekeys --------------------------------------------------------------

    /// The local identity, if one was created.
    pub async fn identity(&self) -> Result<Option<LocalIdentity>, StoreError> {
        let row = sqlx::query("SELECT user_id, server, signing_secret, dh_secret FROM identity")
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let user = UserId::parse(row.get::<String, _>(0).as_str()).map_err(corrupt)?;
        // Wiped once the keys are built (SQLite keeps copies of its own; SECURITY.md §7).
        let signing = Zeroizing::new(row.get::<Vec<u8>, _>(2));
        let dh = Zeroizing::new(row.get::<Vec<u8>, _>(3));
        let keys = IdentityKeyPair::from_secret_bytes(&signing, &dh).map_err(corrupt)?;
        Ok(Some(LocalIdentity { user, server: row.get(1), keys }))
    }

    /// Whether the saved identity's registration was confirmed by the relay (`None` without
    /// an identity).
    pub async fn registered(&self) -> Result<Option<bool>, StoreError> {
        let registered: Option<i64> = sqlx::query_scalar("SELECT registered FROM identity")
            .fetch_optional(&self.pool)
            .await?;
        Ok(registered.map(|flag| flag != 0))
    }

    /// Records that the relay confirmed the registration.
    pub async fn mark_registered(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE identity SET registered = 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Forgets an identity the relay never accepted (its id is someone else's), with its
    /// keys, so that the home can register another id. Does nothing to a registered one.
    pub async fn forget_unregistered(&self) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let registered: Option<i64> =
            sqlx::query_scalar("SELECT registered FROM identity").fetch_optional(&mut *tx).await?;
        if registered == Some(0) {
            sqlx::query("DELETE FROM one_time_prekeys").execute(&mut *tx).await?;
            sqlx::query("DELETE FROM signed_prekeys").execute(&mut *tx).await?;
            sqlx::query("DELETE FROM identity").execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Saves a new identity with its first prekeys, in one transaction, as not yet registered
    /// ([`Store::mark_registered`] once the relay confirms it).
    pub async fn create_identity(
        &self,
        identity: &LocalIdentity,
        signed_prekey: &SignedPrekey,
        created_at_seconds: u64,
        one_time: &[OneTimePrekey],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO identity \
             (id, user_id, server, signing_secret, dh_secret, created_at, registered) \
             VALUES (1, $1, $2, $3, $4, $5, 0)",
        )
        .bind(identity.user.as_str())
        .bind(&identity.server)
        .bind(&identity.keys.signing_key().to_bytes()[..])
        .bind(&identity.keys.dh_key_pair().secret().to_bytes()[..])
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_signed_prekey(&mut tx, signed_prekey, created_at_seconds).await?;
        for key in one_time {
            insert_one_time_prekey(&mut tx, key).await?;
        }
        let max = one_time.iter().map(OneTimePrekey::id).max().unwrap_or(0).max(signed_prekey.id());
        advance_prekey_id(&mut tx, max).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes the relay this identity talks to.
    pub async fn set_server(&self, server: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE identity SET server = $1").bind(server).execute(&self.pool).await?;
        Ok(())
    }

    /// Every signed prekey still kept, newest first, with creation time (Unix seconds).
    pub async fn signed_prekeys(
        &self,
        identity: &IdentityKeyPair,
    ) -> Result<Vec<(SignedPrekey, u64, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, secret, created_at, current FROM signed_prekeys ORDER BY key_id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id = u32::try_from(row.get::<i64, _>(0)).map_err(corrupt)?;
                let secret = Zeroizing::new(row.get::<Vec<u8>, _>(1));
                let created = to_u64(row.get(2));
                let prekey = SignedPrekey::from_secret_bytes(identity, id, created, &secret)
                    .map_err(corrupt)?;
                Ok((prekey, created, row.get::<i64, _>(3) != 0))
            })
            .collect()
    }

    /// Adds a new current signed prekey (created at `created_at_seconds`, which is also when
    /// the previous one is retired) and forgets the keys retired before `forget_before`
    /// (seconds). Retirement, not creation, starts the retention: the relay hands out the
    /// current key until the moment it is replaced, however old it is by then.
    pub async fn rotate_signed_prekey(
        &self,
        prekey: &SignedPrekey,
        created_at_seconds: u64,
        forget_before: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE signed_prekeys SET current = 0, retired_at = $1 WHERE current = 1")
            .bind(to_i64(created_at_seconds))
            .execute(&mut *tx)
            .await?;
        insert_signed_prekey(&mut tx, prekey, created_at_seconds).await?;
        advance_prekey_id(&mut tx, prekey.id()).await?;
        sqlx::query("DELETE FROM signed_prekeys WHERE current = 0 AND retired_at < $1")
            .bind(to_i64(forget_before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A one-time prekey by id.
    pub async fn one_time_prekey(&self, id: u32) -> Result<Option<OneTimePrekey>, StoreError> {
        let row = sqlx::query("SELECT secret FROM one_time_prekeys WHERE key_id = $1")
            .bind(i64::from(id))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let secret = Zeroizing::new(row.get::<Vec<u8>, _>(0));
            let pair = DhKeyPair::from_secret(DhSecretKey::from_bytes(&secret).map_err(corrupt)?);
            Ok(OneTimePrekey::from_key_pair(id, pair))
        })
        .transpose()
    }

    /// The next unused prekey id (one-time and signed prekeys share the sequence).
    pub async fn next_prekey_id(&self) -> Result<u32, StoreError> {
        let next: Option<i64> = sqlx::query_scalar("SELECT next_prekey_id FROM identity")
            .fetch_optional(&self.pool)
            .await?;
        Ok(u32::try_from(next.unwrap_or(1)).unwrap_or(u32::MAX))
    }

    /// Takes `count` prekey ids for new keys and returns the first: taken in one statement, so
    /// two processes on this store (`sotto chat` and `sotto recv`) topping up at once get
    /// different ids instead of colliding on the second insert.
    pub async fn reserve_prekey_ids(&self, count: u32) -> Result<u32, StoreError> {
        let first: i64 = sqlx::query_scalar(
            "UPDATE identity SET next_prekey_id = next_prekey_id + $1 \
             RETURNING next_prekey_id - $1",
        )
        .bind(i64::from(count))
        .fetch_one(&self.pool)
        .await?;
        u32::try_from(first).map_err(corrupt)
    }

    /// Adds one-time prekeys.
    pub async fn add_one_time_prekeys(&self, keys: &[OneTimePrekey]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for key in keys {
            insert_one_time_prekey(&mut tx, key).await?;
        }
        if let Some(max) = keys.iter().map(OneTimePrekey::id).max() {
            advance_prekey_id(&mut tx, max).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes one-time prekeys the relay never took (over its cap): nobody can use them.
    pub async fn delete_one_time_prekeys(&self, ids: &[u32]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for &id in ids {
            delete_one_time_prekey(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records what the relay says it still holds: one-time prekeys from id `from` on (none
    /// when `None`). Bundles hand out the lowest id first, so every key below it was handed
    /// out; it is marked so at `now` unless it already was, and keys at or above it are
    /// unmarked (a key saved by another process before its upload may have been marked).
    /// Keys handed out before `forget_before` are deleted: their prekey message, if one was
    /// ever written, would have come by then. Returns how many were deleted.
    pub async fn note_one_time_prekeys_held(
        &self,
        from: Option<u32>,
        now: u64,
        forget_before: u64,
    ) -> Result<u64, StoreError> {
        // Every id is below u32::MAX + 1, so "none held" is "held from beyond every id".
        let from = from.map_or(i64::from(u32::MAX) + 1, i64::from);
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE one_time_prekeys SET handed_out_at = NULL \
             WHERE key_id >= $1 AND handed_out_at IS NOT NULL",
        )
        .bind(from)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE one_time_prekeys SET handed_out_at = $2 \
             WHERE key_id < $1 AND handed_out_at IS NULL",
        )
        .bind(from)
        .bind(to_i64(now))
        .execute(&mut *tx)
        .await?;
        let forgotten = sqlx::query(
            "DELETE FROM one_time_prekeys WHERE handed_out_at IS NOT NULL AND handed_out_at < $1",
        )
        .bind(to_i64(forget_before))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(forgotten)
    }

    /// How many one-time prekeys are kept.
    pub async fn one_time_prekey_count(&self) -> Result<usize, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM one_time_prekeys")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    // ---- sessions and contacts -------------------------------------------------------------

    /// A peer's session record.
    pub async fn session(&self, peer: &str) -> Result<SessionRecord, StoreError> {
        let mut connection = self.pool.acquire().await?;
        session(&mut connection, peer).await
    }

    /// A contact.
    pub async fn contact(&self, peer: &str) -> Result<Option<Contact>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        contact(&mut connection, peer).await
    }

    /// Every contact.
    pub async fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let rows = sqlx::query(
            "SELECT peer, signing, dh, signature, verified, pending_signing, pending_dh, \
             pending_signature FROM contacts ORDER BY peer",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let peer: String = row.get(0);
                let tail = ContactRow {
                    signing: row.get(1),
                    dh: row.get(2),
                    signature: row.get(3),
                    verified: row.get(4),
                    pending: (row.get(5), row.get(6), row.get(7)),
                };
                tail.into_contact(&peer)
            })
            .collect()
    }

    /// Marks a contact verified (the user compared safety numbers).
    pub async fn set_verified(&self, peer: &str, verified: bool) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE contacts SET verified = $2 WHERE peer = $1")
            .bind(peer)
            .bind(i64::from(verified))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Accepts a contact's changed identity, if it is still `expected` (the one whose safety
    /// number the user was shown): it becomes the accepted one (unverified), sessions with the
    /// old identity are dropped so the next message starts afresh, and the count of the
    /// peer's records starts again with the new identity's next one (PROTOCOL.md §7.3).
    pub async fn accept_pending(
        &self,
        peer: &str,
        expected: &PublicIdentity,
    ) -> Result<Accepted, StoreError> {
        // One write transaction from the read on: a receive in another process cannot slip a
        // session or a pending identity in between.
        let mut tx = self.begin().await?;
        let Some(pending) = contact(&mut tx, peer).await?.and_then(|contact| contact.pending)
        else {
            return Ok(Accepted::NothingPending);
        };
        if !pending.same_keys(expected) {
            // Another identity became pending since the user looked (a relay can make one
            // up at any moment): accepting it would trust keys nobody compared.
            return Ok(Accepted::PendingChanged);
        }
        let json = identity_text(&pending);
        sqlx::query(
            "UPDATE contacts SET signing = $2, dh = $3, signature = $4, verified = 0, \
             pending_signing = NULL, pending_dh = NULL, pending_signature = NULL WHERE peer = $1",
        )
        .bind(peer)
        .bind(&json.signing)
        .bind(&json.dh)
        .bind(&json.signature)
        .execute(&mut *tx)
        .await?;
        let mut record = session(&mut tx, peer).await?;
        let kept: Vec<_> = record
            .sessions()
            .iter()
            .filter(|s| s.remote_identity().same_keys(&pending))
            .cloned()
            .collect();
        record.clear();
        for session in kept.into_iter().rev() {
            record.promote(session);
        }
        save_session(&mut tx, peer, &record).await?;
        // Entries sealed for the old identity but never stored by the relay are sealed again,
        // for the identity just accepted, when they are next sent.
        sqlx::query("UPDATE outbox SET envelope = NULL WHERE peer = $1")
            .bind(peer)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE conversations SET received_contiguous = 0, received_above = '', \
             missing_for_good = 0 WHERE peer = $1",
        )
        .bind(peer)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Accepted::Accepted)
    }

    // ---- conversations and history ---------------------------------------------------------

    /// A conversation's counters.
    pub async fn counters(&self, peer: &str) -> Result<Counters, StoreError> {
        let mut connection = self.pool.acquire().await?;
        counters(&mut connection, peer).await
    }

    /// The conversation list, most recent first.
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.peer, c.unread, c.updated_at, \
               (SELECT body FROM messages m WHERE m.peer = c.peer ORDER BY id DESC LIMIT 1) \
             FROM conversations c ORDER BY c.updated_at DESC, c.peer",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ConversationSummary {
                peer: row.get(0),
                unread: to_u64(row.get(1)),
                updated_at: row.get(2),
                last: row.get(3),
            })
            .collect())
    }

    /// Makes sure a conversation exists (starting one with someone new).
    pub async fn touch_conversation(&self, peer: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO conversations (peer, updated_at) VALUES ($1, $2) \
             ON CONFLICT (peer) DO NOTHING",
        )
        .bind(peer)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a conversation read (and its messages shown).
    pub async fn mark_read(&self, peer: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE conversations SET unread = 0 WHERE peer = $1")
            .bind(peer)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE messages SET seen = 1 WHERE peer = $1 AND seen = 0")
            .bind(peer)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The last `limit` messages with a peer, oldest first.
    pub async fn history(&self, peer: &str, limit: i64) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM (SELECT * FROM messages WHERE peer = $1 ORDER BY id DESC LIMIT $2) \
                 ORDER BY id"
        ))
        .bind(peer)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    /// Incoming messages saved but not yet shown to the user, oldest first (a `recv` that was
    /// killed between saving and printing prints them next time), claimed for this process:
    /// those that a process still running saved are left to it, as it is showing them now.
    pub async fn claim_unseen(&self) -> Result<Vec<StoredMessage>, StoreError> {
        let me = i64::from(std::process::id());
        // One write transaction: two processes starting at once cannot both claim a row.
        let mut tx = self.begin().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            ", saved_by FROM messages WHERE outgoing = 0 AND seen = 0 ORDER BY id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::new();
        for row in &rows {
            let saved_by: Option<i64> = row.get(9);
            // A process that is still running shows what it saved itself.
            if saved_by.is_some_and(|pid| pid != me && process_running(pid)) {
                continue;
            }
            let message = message_from_row(row);
            sqlx::query("UPDATE messages SET saved_by = $2 WHERE id = $1")
                .bind(message.id)
                .bind(me)
                .execute(&mut *tx)
                .await?;
            claimed.push(message);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Marks messages shown.
    pub async fn mark_seen(&self, ids: &[i64]) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("UPDATE messages SET seen = 1 WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Whether an incoming message with this relay id was already saved.
    pub async fn has_incoming(&self, peer: &str, server_id: i64) -> Result<bool, StoreError> {
        let mut connection = self.pool.acquire().await?;
        has_incoming(&mut connection, peer, server_id).await
    }

    /// Sets the status of outgoing messages by relay id (delivery receipts).
    pub async fn mark_delivered(
        &self,
        server_ids: &[i64],
        now: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut changed = Vec::new();
        for id in server_ids {
            // A message the peer already said it never received stays unconfirmed.
            let row = sqlx::query(concat!(
                "UPDATE messages SET status = 'delivered', delivered_at = $2 \
                     WHERE outgoing = 1 AND server_id = $1 AND status IN ('sending', 'stored') \
                     RETURNING ",
                message_columns!()
            ))
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            changed.extend(row.as_ref().map(message_from_row));
        }
        Ok(changed)
    }

    /// Relay ids of our messages that are stored but not known to be delivered.
    pub async fn undelivered_ids(&self) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(UNDELIVERED_IDS).fetch_all(&self.pool).await?)
    }

    /// The outbox, oldest first.
    pub async fn outbox(&self) -> Result<Vec<Outgoing>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id, peer, message_id, envelope FROM outbox ORDER BY created_at, rowid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(outgoing_from_row).collect())
    }

    /// One outbox entry, if it is still there.
    pub async fn outbox_entry(&self, client_id: &str) -> Result<Option<Outgoing>, StoreError> {
        let row = sqlx::query(
            "SELECT client_id, peer, message_id, envelope FROM outbox WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(outgoing_from_row))
    }

    /// A history row.
    pub async fn message(&self, id: i64) -> Result<Option<StoredMessage>, StoreError> {
        let row =
            sqlx::query(concat!("SELECT ", message_columns!(), " FROM messages WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.as_ref().map(message_from_row))
    }

    /// The relay stored an outgoing message: record its id and drop it from the outbox.
    pub async fn mark_stored(&self, client_id: &str, server_id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE messages SET server_id = $2, status = CASE WHEN status = 'sending' \
             THEN 'stored' ELSE status END WHERE client_id = $1 AND outgoing = 1",
        )
        .bind(client_id)
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The relay refused an outgoing message for good: mark it failed and drop it.
    pub async fn mark_failed(&self, client_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE messages SET status = 'failed' WHERE client_id = $1 AND outgoing = 1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM outbox WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

struct ContactRow {
    signing: String,
    dh: String,
    signature: String,
    verified: i64,
    pending: (Option<String>, Option<String>, Option<String>),
}

impl ContactRow {
    fn into_contact(self, peer: &str) -> Result<Contact, StoreError> {
        let pending = match self.pending {
            (Some(signing), Some(dh), Some(signature)) => {
                Some(identity_from_text(&signing, &dh, &signature)?)
            }
            _ => None,
        };
        Ok(Contact {
            peer: UserId::parse(peer).map_err(corrupt)?,
            identity: identity_from_text(&self.signing, &self.dh, &self.signature)?,
            verified: self.verified != 0,
            pending,
        })
    }
}

fn contact_from_row(peer: &str, row: &sqlx::sqlite::SqliteRow) -> Result<Contact, StoreError> {
    ContactRow {
        signing: row.get(0),
        dh: row.get(1),
        signature: row.get(2),
        verified: row.get(3),
        pending: (row.get(4), row.get(5), row.get(6)),
    }
    .into_contact(peer)
}

/// An outbox row selected as `client_id, peer, message_id, envelope`.
fn outgoing_from_row(row: &sqlx::sqlite::SqliteRow) -> Outgoing {
    Outgoing {
        client_id: row.get(0),
        peer: row.get(1),
        message_id: row.get(2),
        envelope: row.get(3),
    }
}

fn message_from_row(row: &sqlx::sqlite::SqliteRow) -> StoredMessage {
    StoredMessage {
        id: row.get(0),
        peer: row.get(1),
        outgoing: row.get::<i64, _>(2) != 0,
        body: row.get(3),
        counter: row.get::<Option<i64>, _>(4).map(to_u64),
        sent_at: row.get(5),
        received_at: row.get(6),
        server_id: row.get(7),
        status: row.get(8),
    }
}

async fn insert_signed_prekey(
    tx: &mut SqliteConnection,
    prekey: &SignedPrekey,
    created_at_seconds: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO signed_prekeys (key_id, secret, created_at, current) VALUES ($1, $2, $3, 1)",
    )
    .bind(i64::from(prekey.id()))
    .bind(&prekey.key_pair().secret().to_bytes()[..])
    .bind(to_i64(created_at_seconds))
    .execute(tx)
    .await?;
    Ok(())
}

async fn advance_prekey_id(tx: &mut SqliteConnection, used: u32) -> Result<(), StoreError> {
    sqlx::query("UPDATE identity SET next_prekey_id = MAX(next_prekey_id, $1)")
        .bind(i64::from(used) + 1)
        .execute(tx)
        .await?;
    Ok(())
}

async fn insert_one_time_prekey(
    tx: &mut SqliteConnection,
    key: &OneTimePrekey,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO one_time_prekeys (key_id, secret) VALUES ($1, $2)")
        .bind(i64::from(key.id()))
        .bind(&key.key_pair().secret().to_bytes()[..])
        .execute(tx)
        .await?;
    Ok(())
}

// ---- operations used inside a caller's transaction ---------------------------------------------

/// Saves a peer's session record.
pub async fn save_session(
    tx: &mut SqliteConnection,
    peer: &str,
    record: &SessionRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sessions (peer, record) VALUES ($1, $2) \
         ON CONFLICT (peer) DO UPDATE SET record = excluded.record",
    )
    .bind(peer)
    .bind(&record.to_bytes()[..])
    .execute(tx)
    .await?;
    Ok(())
}

/// What seeing a peer's identity meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First contact: accepted on first use.
    New,
    /// The accepted identity.
    Known,
    /// Not the accepted identity: now pending until the user accepts it.
    Changed,
}

/// A contact, read on `connection` (a transaction's, to read what it will change).
pub async fn contact(
    connection: &mut SqliteConnection,
    peer: &str,
) -> Result<Option<Contact>, StoreError> {
    let row = sqlx::query(
        "SELECT signing, dh, signature, verified, pending_signing, pending_dh, \
         pending_signature FROM contacts WHERE peer = $1",
    )
    .bind(peer)
    .fetch_optional(&mut *connection)
    .await?;
    row.map(|row| contact_from_row(peer, &row)).transpose()
}

/// Records that `identity` was seen for `peer`.
pub async fn see_identity(
    tx: &mut SqliteConnection,
    peer: &str,
    identity: &PublicIdentity,
    now: i64,
) -> Result<Seen, StoreError> {
    let row = sqlx::query(
        "SELECT signing, dh, signature, verified, pending_signing, pending_dh, pending_signature \
         FROM contacts WHERE peer = $1",
    )
    .bind(peer)
    .fetch_optional(&mut *tx)
    .await?;
    let json = identity_text(identity);
    let Some(row) = row else {
        sqlx::query(
            "INSERT INTO contacts (peer, signing, dh, signature, added_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(peer)
        .bind(&json.signing)
        .bind(&json.dh)
        .bind(&json.signature)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        return Ok(Seen::New);
    };
    let contact = contact_from_row(peer, &row)?;
    if contact.identity.same_keys(identity) {
        return Ok(Seen::Known);
    }
    sqlx::query(
        "UPDATE contacts SET pending_signing = $2, pending_dh = $3, pending_signature = $4, \
         changed_at = $5 WHERE peer = $1",
    )
    .bind(peer)
    .bind(&json.signing)
    .bind(&json.dh)
    .bind(&json.signature)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(Seen::Changed)
}

/// A conversation's counters, inside a transaction.
pub async fn counters(tx: &mut SqliteConnection, peer: &str) -> Result<Counters, StoreError> {
    let row = sqlx::query(
        "SELECT sent_counter, received_contiguous, received_above, last_counter, last_digest, \
         peer_received, missing_for_good FROM conversations WHERE peer = $1",
    )
    .bind(peer)
    .fetch_optional(tx)
    .await?;
    let Some(row) = row else {
        return Ok(Counters::default());
    };
    let above: String = row.get(2);
    let digest: Option<Vec<u8>> = row.get(4);
    let mut last_digest = MessageDigest::NONE;
    if let Some(bytes) = digest.filter(|d| d.len() == 32) {
        last_digest.0.copy_from_slice(&bytes);
    }
    Ok(Counters {
        sent: to_u64(row.get(0)),
        received_contiguous: to_u64(row.get(1)),
        received_above: above.split(',').filter_map(|c| c.parse().ok()).collect(),
        last_counter: to_u64(row.get(3)),
        last_digest,
        peer_received: to_u64(row.get(5)),
        missing_for_good: to_u64(row.get(6)),
    })
}

/// Saves a conversation's counters; `unread` is added to its unread count.
pub async fn save_counters(
    tx: &mut SqliteConnection,
    peer: &str,
    counters: &Counters,
    unread: i64,
    now: i64,
) -> Result<(), StoreError> {
    let above = counters.received_above.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    sqlx::query(
        "INSERT INTO conversations (peer, sent_counter, received_contiguous, received_above, \
           last_counter, last_digest, peer_received, unread, updated_at, missing_for_good) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (peer) DO UPDATE SET sent_counter = excluded.sent_counter, \
           received_contiguous = excluded.received_contiguous, \
           received_above = excluded.received_above, last_counter = excluded.last_counter, \
           last_digest = excluded.last_digest, peer_received = excluded.peer_received, \
           unread = conversations.unread + excluded.unread, updated_at = excluded.updated_at, \
           missing_for_good = excluded.missing_for_good",
    )
    .bind(peer)
    .bind(to_i64(counters.sent))
    .bind(to_i64(counters.received_contiguous))
    .bind(above)
    .bind(to_i64(counters.last_counter))
    .bind(&counters.last_digest.0[..])
    .bind(to_i64(counters.peer_received))
    .bind(unread)
    .bind(now)
    .bind(to_i64(counters.missing_for_good))
    .execute(tx)
    .await?;
    Ok(())
}

/// Adds a history row and returns its id.
pub async fn insert_message(
    tx: &mut SqliteConnection,
    message: &StoredMessage,
    client_id: Option<&str>,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (peer, outgoing, body, counter, sent_at, received_at, client_id, \
           server_id, status, saved_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         RETURNING id",
    )
    .bind(&message.peer)
    .bind(i64::from(message.outgoing))
    .bind(&message.body)
    .bind(message.counter.map(to_i64))
    .bind(message.sent_at)
    .bind(message.received_at)
    .bind(client_id)
    .bind(message.server_id)
    .bind(&message.status)
    .bind(i64::from(std::process::id()))
    .fetch_one(tx)
    .await?;
    Ok(id)
}

/// Whether the process `pid` is running (Linux: its `/proc` entry exists). Elsewhere it is
/// taken as gone, so at worst a message is shown twice, never not at all. A pid reused by
/// another process since keeps that run's unprinted messages back until it ends.
fn process_running(pid: i64) -> bool {
    cfg!(target_os = "linux") && Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes a used one-time prekey.
pub async fn delete_one_time_prekey(tx: &mut SqliteConnection, id: u32) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM one_time_prekeys WHERE key_id = $1")
        .bind(i64::from(id))
        .execute(tx)
        .await?;
    Ok(())
}

/// Queues an outgoing message.
pub async fn queue_outgoing(
    tx: &mut SqliteConnection,
    client_id: &str,
    peer: &str,
    message_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (client_id, peer, message_id, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(client_id)
    .bind(peer)
    .bind(message_id)
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}

/// A peer's session record, read inside a transaction that will save it again, so that two
/// processes on one store never both advance the same ratchet state.
pub async fn session(tx: &mut SqliteConnection, peer: &str) -> Result<SessionRecord, StoreError> {
    let record: Option<Vec<u8>> = sqlx::query_scalar("SELECT record FROM sessions WHERE peer = $1")
        .bind(peer)
        .fetch_optional(tx)
        .await?;
    // Root, chain and skipped message keys: wiped once decoded.
    match record.map(Zeroizing::new) {
        Some(bytes) => SessionRecord::from_bytes(&bytes).map_err(corrupt),
        None => Ok(SessionRecord::new()),
    }
}

/// Whether an incoming message with this relay id was already saved.
pub async fn has_incoming(
    tx: &mut SqliteConnection,
    peer: &str,
    server_id: i64,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM messages WHERE peer = $1 AND outgoing = 0 AND server_id = $2",
    )
    .bind(peer)
    .bind(server_id)
    .fetch_optional(tx)
    .await?;
    Ok(found.is_some())
}

/// An outbox entry's envelope: `None` if the entry is gone (sent), `Some(None)` if it is
/// queued and not sealed yet.
pub async fn sealed_envelope(
    tx: &mut SqliteConnection,
    client_id: &str,
) -> Result<Option<Option<String>>, StoreError> {
    let envelope: Option<Option<String>> =
        sqlx::query_scalar("SELECT envelope FROM outbox WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(tx)
            .await?;
    Ok(envelope)
}

/// Records an outgoing message's envelope.
pub async fn seal_outgoing(
    tx: &mut SqliteConnection,
    client_id: &str,
    envelope: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET envelope = $2 WHERE client_id = $1")
        .bind(client_id)
        .bind(envelope)
        .execute(tx)
        .await?;
    Ok(())
}

/// Saves the digest of the record sealed for one of our messages.
pub async fn set_digest(
    tx: &mut SqliteConnection,
    message_id: i64,
    digest: &MessageDigest,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE messages SET digest = $2 WHERE id = $1")
        .bind(message_id)
        .bind(&digest.0[..])
        .execute(tx)
        .await?;
    Ok(())
}

/// Clock difference tolerated between two devices when comparing their times (the browser
/// client's `CLOCK_SKEW_MS`).
pub const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// What a peer's record says about our records (PROTOCOL.md §7.3), checked against what we
/// sent and what the relay told us.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerWord {
    /// Our messages the peer confirms, which the relay had not (yet) reported delivered.
    pub confirmed: Vec<StoredMessage>,
    /// The record the peer names as the last of ours it received has another digest than the
    /// one we sealed under that counter.
    pub digest_mismatch: bool,
    /// Our messages the relay reported delivered that the peer, writing well after, says it
    /// never received: newly flagged `unconfirmed`.
    pub unconfirmed: Vec<StoredMessage>,
}

// What every arriving message runs (through `check_peer_word`), each served by an index of
// migration 0006 rather than a walk through the conversation.
/// The digest we sealed under one of our counters.
const SEALED_DIGEST: &str =
    "SELECT digest FROM messages WHERE peer = $1 AND outgoing = 1 AND counter = $2";
/// Our messages up to the counter the peer confirms are delivered.
const CONFIRM_OURS: &str = concat!(
    "UPDATE messages SET status = 'delivered', delivered_at = coalesce(delivered_at, $3) \
     WHERE peer = $1 AND outgoing = 1 AND counter <= $2 \
       AND status IN ('sending', 'stored', 'unconfirmed') \
     RETURNING ",
    message_columns!()
);
/// Our messages reported delivered long before a record of the peer's that does not have them.
const FLAG_WITHHELD: &str = concat!(
    "UPDATE messages SET status = 'unconfirmed' \
     WHERE peer = $1 AND outgoing = 1 AND counter > $2 AND status = 'delivered' \
       AND delivered_at IS NOT NULL AND $3 > delivered_at + $4 \
     RETURNING ",
    message_columns!()
);
/// Relay ids of our messages stored but not known delivered (run at each login).
const UNDELIVERED_IDS: &str = "SELECT server_id FROM messages WHERE outgoing = 1 \
     AND status = 'stored' AND server_id IS NOT NULL ORDER BY id DESC LIMIT 1000";

/// Checks a peer's record against our messages to that peer: `up_to` and `digest` are the
/// counter and digest of the last of our records it received, `confirmed_before` what the
/// peer had confirmed before this record, `their_sent_at` when it wrote it (its clock).
///
/// Every message up to `up_to` is delivered, whatever the relay said. A relay that
/// acknowledges on the peer's behalf and withholds the message shows up as a "delivered"
/// message above `up_to` in a record written well after the relay's report.
pub async fn check_peer_word(
    tx: &mut SqliteConnection,
    peer: &str,
    up_to: u64,
    digest: &MessageDigest,
    confirmed_before: u64,
    their_sent_at: i64,
    now: i64,
) -> Result<PeerWord, StoreError> {
    let mut word = PeerWord::default();
    if up_to > confirmed_before {
        let sealed: Option<Option<Vec<u8>>> = sqlx::query_scalar(SEALED_DIGEST)
            .bind(peer)
            .bind(to_i64(up_to))
            .fetch_optional(&mut *tx)
            .await?;
        // Not a secret: a plain comparison will do.
        word.digest_mismatch =
            matches!(sealed, Some(Some(ours)) if ours.as_slice() != digest.0.as_slice());
    }
    let confirmed = sqlx::query(CONFIRM_OURS)
        .bind(peer)
        .bind(to_i64(up_to))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    word.confirmed = confirmed.iter().map(message_from_row).collect();
    let withheld = sqlx::query(FLAG_WITHHELD)
        .bind(peer)
        .bind(to_i64(up_to))
        .bind(their_sent_at)
        .bind(CLOCK_SKEW_MS)
        .fetch_all(&mut *tx)
        .await?;
    word.unconfirmed = withheld.iter().map(message_from_row).collect();
    word.confirmed.sort_by_key(|m| m.id);
    word.unconfirmed.sort_by_key(|m| m.id);
    Ok(word)
}

/// Base64url of a digest, for display.
pub fn digest_text(digest: &MessageDigest) -> String {
    wire::b64(&digest.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two receivers on one store: what one saved while running is its own to show; what a
    /// run that ended saved unshown is the next run's.
    #[tokio::test]
    async fn unseen_messages_saved_by_a_running_process_are_left_to_it() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        ended.wait().unwrap();
        for (n, pid) in [(1, None), (2, Some(1)), (3, Some(i64::from(ended.id())))] {
            let mut tx = store.begin().await.unwrap();
            let message = StoredMessage {
                id: 0,
                peer: "alice".into(),
                outgoing: false,
                body: Some(format!("message {n}")),
                counter: Some(n),
                sent_at: 0,
                received_at: Some(0),
                server_id: Some(n as i64),
                status: "received".into(),
            };
            let id = insert_message(&mut tx, &message, None).await.unwrap();
            sqlx::query("UPDATE messages SET saved_by = $2 WHERE id = $1")
                .bind(id)
                .bind(pid)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let bodies = |messages: Vec<StoredMessage>| {
            messages.into_iter().filter_map(|m| m.body).collect::<Vec<_>>()
        };
        // Process 1 (init) runs for as long as the machine: its message stays its own.
        let claimed = bodies(store.claim_unseen().await.unwrap());
        assert_eq!(claimed, ["message 1", "message 3"]);
        // Claimed, they are this process's now: claimed again by it (not yet marked seen),
        // and by nobody else while it runs.
        assert_eq!(bodies(store.claim_unseen().await.unwrap()), claimed);
    }

    /// One record that never comes must not make every later one grow the list for good:
    /// past the cap the oldest gap is given up on, and still counted missing.
    #[test]
    fn counters_above_a_gap_are_capped_and_what_is_given_up_stays_missing() {
        let mut counters = Counters::default();
        counters.note_received(1, MessageDigest::NONE);
        // 2 never comes; 3 to 1,002 do (1,000 above the gap), then one more.
        for counter in 3..=1_002 {
            counters.note_received(counter, MessageDigest::NONE);
        }
        assert_eq!((counters.received_above.len(), counters.missing()), (1_000, 1));
        counters.note_received(1_003, MessageDigest::NONE);
        assert!(counters.received_above.len() <= MAX_RECEIVED_ABOVE);
        assert_eq!(counters.received_contiguous, 1_003, "given up on 2: the rest is contiguous");
        assert_eq!((counters.missing_for_good, counters.missing()), (1, 1));
        // Every other record from here on missing: the list stays bounded, the count exact.
        for counter in (1_005..=5_003).step_by(2) {
            counters.note_received(counter, MessageDigest::NONE);
        }
        assert!(counters.received_above.len() <= MAX_RECEIVED_ABOVE);
        assert_eq!(counters.missing(), 1 + 2_000, "2, and 1,004 to 5,002 even");
        // A record given up on that arrives late changes nothing.
        counters.note_received(2, MessageDigest::NONE);
        assert_eq!(counters.missing(), 2_001);

        // Exactly at the cap, the record that fills the gap gives nothing up.
        let mut counters = Counters::default();
        counters.note_received(1, MessageDigest::NONE);
        for counter in 4..=1_003 {
            counters.note_received(counter, MessageDigest::NONE);
        }
        counters.note_received(2, MessageDigest::NONE);
        counters.note_received(3, MessageDigest::NONE);
        assert_eq!((counters.missing(), counters.received_contiguous), (0, 1_003));
    }

    /// A peer's counter is any u64; the last one possible must not overflow the count.
    #[test]
    fn counters_take_the_largest_counter() {
        let mut counters = Counters { received_contiguous: u64::MAX - 1, ..Counters::default() };
        counters.note_received(u64::MAX, MessageDigest::NONE);
        assert_eq!(counters.received_contiguous, u64::MAX);
        assert_eq!(counters.missing(), 0);
        counters.note_received(u64::MAX, MessageDigest::NONE);
        assert_eq!((counters.received_contiguous, counters.missing()), (u64::MAX, 0));
    }

    #[test]
    fn counters_track_gaps_and_late_arrivals() {
        let mut counters = Counters::default();
        counters.note_received(1, MessageDigest::NONE);
        assert_eq!(counters.missing(), 0);
        counters.note_received(4, MessageDigest::NONE);
        assert_eq!(counters.missing(), 2, "2 and 3 are missing");
        counters.note_received(3, MessageDigest::NONE);
        assert_eq!(counters.missing(), 1);
        counters.note_received(2, MessageDigest::NONE);
        assert_eq!(counters.missing(), 0);
        assert_eq!(counters.received_contiguous, 4);
        assert!(counters.received_above.is_empty());
        counters.note_received(2, MessageDigest::NONE);
        assert_eq!(counters.received_contiguous, 4, "a repeat changes nothing");
    }

    /// Saves our message number `counter` to bob with `status`, sealed with digest
    /// `[counter; 32]`, reported delivered at `delivered_at`.
    async fn sent(store: &Store, counter: u64, status: &str, delivered_at: Option<i64>) -> i64 {
        let mut tx = store.begin().await.unwrap();
        let message = StoredMessage {
            id: 0,
            peer: "bob".into(),
            outgoing: true,
            body: Some(format!("message {counter}")),
            counter: Some(counter),
            sent_at: 1_000,
            received_at: None,
            server_id: Some(i64::try_from(counter).unwrap()),
            status: status.into(),
        };
        let id = insert_message(&mut tx, &message, None).await.unwrap();
        set_digest(&mut tx, id, &MessageDigest([u8::try_from(counter).unwrap(); 32]))
            .await
            .unwrap();
        sqlx::query("UPDATE messages SET delivered_at = $2 WHERE id = $1")
            .bind(id)
            .bind(delivered_at)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        id
    }

    fn statuses(word: &[StoredMessage]) -> Vec<(u64, &str)> {
        word.iter().map(|m| (m.counter.unwrap(), m.status.as_str())).collect()
    }

    /// A signed prekey is kept for the retention after it is replaced, however old it was when
    /// replaced: a user back after weeks away still has the key the relay handed out meanwhile.
    #[tokio::test]
    async fn a_replaced_signed_prekey_is_kept_from_its_replacement_not_its_creation() {
        const DAY: u64 = 24 * 3600;
        const RETENTION: u64 = 30 * DAY;
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        let identity = IdentityKeyPair::generate(&mut rand::rng());
        let key = |id, created| SignedPrekey::generate(&identity, id, created, &mut rand::rng());
        let kept = async || {
            let keys = store.signed_prekeys(&identity).await.unwrap();
            keys.iter().map(|(key, _, current)| (key.id(), *current)).collect::<Vec<_>>()
        };

        let mut tx = store.begin().await.unwrap();
        insert_signed_prekey(&mut tx, &key(1, 0), 0).await.unwrap();
        tx.commit().await.unwrap();

        // Back on day 40: key 1 is replaced now, 40 days after it was made, and stays.
        store.rotate_signed_prekey(&key(2, 40 * DAY), 40 * DAY, 10 * DAY).await.unwrap();
        assert_eq!(kept().await, [(2, true), (1, false)]);

        // A week later: key 2 is replaced; key 1 has been retired for 7 days and stays.
        store.rotate_signed_prekey(&key(3, 47 * DAY), 47 * DAY, 17 * DAY).await.unwrap();
        assert_eq!(kept().await, [(3, true), (2, false), (1, false)]);

        // Day 71: key 1 was retired 31 days ago and goes; key 2 (24 days) stays.
        let now = 71 * DAY;
        store.rotate_signed_prekey(&key(4, now), now, now - RETENTION).await.unwrap();
        assert_eq!(kept().await, [(4, true), (3, false), (2, false)]);
    }

    /// Keys below the relay's lowest id are marked when first seen so and forgotten after the
    /// retention; a key the relay shows it holds again loses its mark.
    #[tokio::test]
    async fn handed_out_one_time_prekeys_are_marked_then_forgotten() {
        const DAY: u64 = 24 * 3600;
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        let keys: Vec<_> =
            (10..20).map(|id| OneTimePrekey::generate(id, &mut rand::rng())).collect();
        store.add_one_time_prekeys(&keys).await.unwrap();
        let marked = async || {
            sqlx::query_scalar::<_, i64>(
                "SELECT key_id FROM one_time_prekeys WHERE handed_out_at IS NOT NULL ORDER BY key_id",
            )
            .fetch_all(&store.pool)
            .await
            .unwrap()
        };

        // Day 1: the relay holds 13 and up; 10 to 12 were handed out.
        assert_eq!(store.note_one_time_prekeys_held(Some(13), DAY, 0).await.unwrap(), 0);
        assert_eq!(marked().await, [10, 11, 12]);
        // Day 20: 13 and 14 handed out too; nothing old enough to forget yet.
        let forgotten = store.note_one_time_prekeys_held(Some(15), 20 * DAY, 0).await.unwrap();
        assert_eq!(forgotten, 0);
        assert_eq!(marked().await, [10, 11, 12, 13, 14]);
        // The relay shows 14 again (a key uploaded late): unmarked.
        store.note_one_time_prekeys_held(Some(14), 21 * DAY, 0).await.unwrap();
        assert_eq!(marked().await, [10, 11, 12, 13]);
        // Day 32 with a 30-day retention: those marked on day 1 go, 13 (day 20) stays.
        let forgotten =
            store.note_one_time_prekeys_held(Some(14), 32 * DAY, 2 * DAY).await.unwrap();
        assert_eq!(forgotten, 3);
        assert_eq!(marked().await, [13]);
        assert_eq!(store.one_time_prekey_count().await.unwrap(), 7);
        // None left at the relay: every key is handed out.
        store.note_one_time_prekeys_held(None, 33 * DAY, 2 * DAY).await.unwrap();
        assert_eq!(marked().await, (13..20).collect::<Vec<i64>>());
    }

    /// The queries each arriving message and each login run find their rows through an index,
    /// not by walking a conversation (or every message): their cost must not grow with the
    /// history.
    #[tokio::test]
    async fn arrival_and_login_queries_do_not_walk_the_history() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        // Each by the index that bounds it: a counter index for "counter <= n" would still walk
        // every message of ours up to n.
        for (name, sql, parameters, index) in [
            ("sealed digest", SEALED_DIGEST, 2, "messages_ours_by_counter"),
            ("confirm ours", CONFIRM_OURS, 3, "messages_ours_by_status"),
            ("flag withheld", FLAG_WITHHELD, 4, "messages_ours_by_status"),
            ("undelivered ids", UNDELIVERED_IDS, 0, "messages_ours_by_status"),
        ] {
            let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
            if parameters > 0 {
                query = query.bind("bob");
            }
            for value in 1..parameters {
                query = query.bind(i64::from(value));
            }
            let plan: Vec<String> = query
                .fetch_all(&store.pool)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(3))
                .collect();
            let plan = plan.join("; ");
            assert!(plan.contains(&format!("INDEX {index} ")), "{name}: {plan}");
            assert!(!plan.contains("SCAN messages"), "{name}: {plan}");
        }
    }

    /// Two processes opening a store of an older version at once (`sotto chat` beside
    /// `sotto recv` after an upgrade) both finish: the one that loses the race to a migration
    /// reads again what ran.
    #[tokio::test]
    async fn two_processes_upgrading_one_store_at_once_both_open_it() {
        let home = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let store = Store::open(home.path()).await.unwrap();
            // Back to before migration 5 (one that alters a table), as a store from then.
            sqlx::query("ALTER TABLE one_time_prekeys DROP COLUMN handed_out_at")
                .execute(&store.pool)
                .await
                .unwrap();
            sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 5")
                .execute(&store.pool)
                .await
                .unwrap();
            store.close().await;
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    let home = home.path().to_owned();
                    tokio::spawn(async move { Store::open(&home).await.map(|_| ()) })
                })
                .collect();
            for open in opened {
                open.await.unwrap().unwrap();
            }
        }
    }

    #[tokio::test]
    async fn the_peers_record_confirms_ours_and_exposes_a_relay_that_lied() {
        const MINUTE: i64 = 60_000;
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        sent(&store, 1, "delivered", Some(MINUTE)).await;
        sent(&store, 2, "stored", None).await;
        sent(&store, 3, "delivered", Some(2 * MINUTE)).await;
        sent(&store, 4, "failed", None).await;
        sent(&store, 5, "delivered", Some(20 * MINUTE)).await;
        let check = async |up_to: u64, digest: u8, before: u64, their_sent_at: i64| {
            let mut tx = store.begin().await.unwrap();
            let word = check_peer_word(
                &mut tx,
                "bob",
                up_to,
                &MessageDigest([digest; 32]),
                before,
                their_sent_at,
                30 * MINUTE,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            word
        };

        // Bob, writing at minute 10, received up to our second message, sealed as we sealed it.
        // The relay never reported 2 delivered: Bob's word is enough. Message 3 was "delivered"
        // at minute 2, eight minutes before Bob wrote without having it: the relay lied. Message
        // 5's report is younger than the clock skew allowed, so nothing is said about it yet.
        let word = check(2, 2, 0, 10 * MINUTE).await;
        assert!(!word.digest_mismatch);
        assert_eq!(statuses(&word.confirmed), [(2, "delivered")]);
        assert_eq!(statuses(&word.unconfirmed), [(3, "unconfirmed")]);

        // The same word again changes nothing.
        assert_eq!(check(2, 2, 2, 10 * MINUTE).await, PeerWord::default());

        // Later Bob does have 3 (it was late, not lost), sealed as we sealed it; by now the
        // relay's report on 5 is old enough for Bob's silence about it to count.
        let word = check(3, 3, 2, 40 * MINUTE).await;
        assert!(!word.digest_mismatch);
        assert_eq!(statuses(&word.confirmed), [(3, "delivered")]);
        assert_eq!(statuses(&word.unconfirmed), [(5, "unconfirmed")]);

        // Bob names 5 as received, but under another digest than the one we sealed: someone
        // else sent as us. A message that failed is never "delivered".
        let word = check(5, 9, 3, 41 * MINUTE).await;
        assert!(word.digest_mismatch);
        assert_eq!(statuses(&word.confirmed), [(5, "delivered")]);
        let history = store.history("bob", 10).await.unwrap();
        let failed = history.iter().find(|m| m.counter == Some(4)).unwrap();
        assert_eq!(failed.status, "failed");
    }
}
