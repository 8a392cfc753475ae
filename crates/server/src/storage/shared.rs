//! The SQL both backends share. SQLite and PostgreSQL take the same statements (`$n`
//! placeholders, `ON CONFLICT`, `RETURNING`, `UPDATE … FROM (VALUES …)`); only how a write
//! transaction starts and how a one-time prekey is claimed differ, and each backend passes
//! those in.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// A migrator for `migrations` (version, name, SQL), in order. Each backend keeps its own SQL
/// files; sqlx records what ran (with checksums) in `_sqlx_migrations`, so a file that already
/// ran must never change: changes are new files.
pub(crate) fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, name, sql)| {
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

pub(crate) fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Implements [`Storage`](super::Storage) for a backend type holding a `pool` of database `$db`.
macro_rules! impl_storage {
    ($storage:ty, $db:ty, begin = $begin:expr, claim_one_time_prekey = $claim_one_time_prekey:expr, lock_user = $lock_user:expr $(,)?) => {
        impl $storage {
            /// Stores a batch inside a transaction, de-duplicating on (sender, client id): copies
            /// already queued are found first (by the unique index, returning rows only for
            /// them, which are rare), then the rest is inserted without asking for rows back.
            async fn store_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &[NewMessage],
            ) -> Result<Vec<StoreOutcome>, StorageError> {
                // Ids taken before storing come only from the SQLite queue's own connection
                // (`take_message_ids`), whose commits never come here.
                debug_assert!(batch.iter().all(|m| m.id.is_none()), "a pool commit was given ids");
                let mut queued: HashMap<(&str, &str), i64> = HashMap::new();
                for chunk in fixed_chunks(batch) {
                    let mut select =
                        QueryBuilder::<$db>::new("SELECT m.id, m.sender, m.client_id FROM (");
                    select.push_values(chunk, |mut row, message| {
                        row.push_bind(&message.sender).push_bind(&message.client_id);
                    });
                    select.push(
                        ") AS v JOIN messages m ON m.sender = v.column1 AND m.client_id = v.column2",
                    );
                    for row in select.build().fetch_all(&mut **tx).await? {
                        let (id, sender, client_id): (i64, String, String) =
                            (row.get(0), row.get(1), row.get(2));
                        if let Some(message) =
                            chunk.iter().find(|m| m.sender == sender && m.client_id == client_id)
                        {
                            queued.insert((&message.sender, &message.client_id), id);
                        }
                    }
                }
                let mut fresh: Vec<&NewMessage> = Vec::with_capacity(batch.len());
                let mut firsts: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.len());
                for message in batch {
                    let key = (message.sender.as_str(), message.client_id.as_str());
                    if !queued.contains_key(&key) && !firsts.contains_key(&key) {
                        firsts.insert(key, fresh.len());
                        fresh.push(message);
                    }
                }
                let mut ids = Vec::with_capacity(fresh.len());
                for chunk in fixed_chunks(&fresh) {
                    ids.extend(Self::insert_chunk(tx, chunk).await?);
                }
                let mut outcomes = Vec::with_capacity(batch.len());
                let mut first_seen = vec![false; fresh.len()];
                for message in batch {
                    let key = (message.sender.as_str(), message.client_id.as_str());
                    if let Some(&id) = queued.get(&key) {
                        outcomes.push(StoreOutcome::Duplicate(id));
                    } else if let Some(&at) = firsts.get(&key) {
                        let id = ids.get(at).copied().unwrap_or_default();
                        if std::mem::replace(&mut first_seen[at], true) {
                            outcomes.push(StoreOutcome::Duplicate(id));
                        } else {
                            outcomes.push(StoreOutcome::Stored(id));
                        }
                    }
                }
                Ok(outcomes)
            }

            /// Deletes acknowledged messages the writer already matched to their recipients.
            /// Returns those whose receipt is withheld ([`Committed::withheld`]).
            async fn delete_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                ids: &[i64],
            ) -> Result<Vec<i64>, StorageError> {
                let mut withheld = Vec::new();
                for chunk in fixed_chunks(ids) {
                    let mut delete = QueryBuilder::<$db>::new("DELETE FROM messages WHERE id IN (");
                    let mut list = delete.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    // The mark, tested in SQL (`sent_by_earlier_holder`); an integer, which
                    // both databases return alike.
                    delete.push(
                        ") RETURNING id, CASE WHEN client_id LIKE '~%' THEN 1 ELSE 0 END",
                    );
                    let told: std::collections::HashSet<i64> = delete
                        .build()
                        .fetch_all(&mut **tx)
                        .await?
                        .iter()
                        .filter(|row| row.get::<i32, _>(1) == 0)
                        .map(|row| row.get(0))
                        .collect();
                    withheld.extend(chunk.iter().filter(|id| !told.contains(id)));
                }
                Ok(withheld)
            }

            /// Deletes acknowledged messages inside a transaction: only each recipient's own.
            async fn acknowledge_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                acks: &[(String, i64)],
            ) -> Result<Vec<Acknowledged>, StorageError> {
                let mut acknowledged = Vec::with_capacity(acks.len());
                for chunk in fixed_chunks(acks) {
                    // Look the rows up by id (the primary key), keep only those of the
                    // recipient that acknowledges, and delete those.
                    let mut select = QueryBuilder::<$db>::new(
                        "SELECT id, sender, client_id, recipient FROM messages WHERE id IN (",
                    );
                    let mut list = select.separated(", ");
                    for (_, id) in chunk {
                        list.push_bind(*id);
                    }
                    select.push(")");
                    let mut mine = Vec::new();
                    for row in select.build().fetch_all(&mut **tx).await? {
                        let id: i64 = row.get(0);
                        let recipient: String = row.get(3);
                        if chunk.iter().any(|(r, i)| *i == id && *r == recipient) {
                            mine.push(Acknowledged {
                                id,
                                sender: row.get(1),
                                client_id: row.get(2),
                                recipient,
                            });
                        }
                    }
                    if mine.is_empty() {
                        continue;
                    }
                    let mut delete = QueryBuilder::<$db>::new("DELETE FROM messages WHERE id IN (");
                    let mut list = delete.separated(", ");
                    for done in &mine {
                        list.push_bind(done.id);
                    }
                    delete.push(")");
                    delete.build().execute(&mut **tx).await?;
                    acknowledged.extend(mine);
                }
                Ok(acknowledged)
            }

            /// The group commit through the pool, in one transaction.
            async fn commit_with_pool(&self, batch: QueueBatch) -> Result<Committed, StorageError> {
                let tx = self.pool.begin_with($begin).await?;
                Self::commit_in(tx, batch).await
            }

            /// The group commit's work inside `tx`, then the commit.
            async fn commit_in(
                mut tx: sqlx::Transaction<'_, $db>,
                batch: QueueBatch,
            ) -> Result<Committed, StorageError> {
                let outcomes = Self::store_in(&mut tx, &batch.stores).await?;
                for (sender, registered_at) in &batch.earlier_holders {
                    Self::mark_earlier_holder(&mut tx, sender, *registered_at, *registered_at)
                        .await?;
                }
                let withheld = Self::delete_in(&mut tx, &batch.deletes).await?;
                let acknowledged = Self::acknowledge_in(&mut tx, &batch.acks).await?;
                tx.commit().await?;
                Ok(Committed {
                    stores: batch.stores,
                    outcomes,
                    acknowledged,
                    withheld,
                    durable: $crate::storage::Durable::now(),
                })
            }

            /// Marks what `sender`'s earlier holder sent, received before `received_before`
            /// and still queued, as not the holder registered at `registered_at`'s
            /// (`crate::storage::earlier_holder_mark`).
            async fn mark_earlier_holder(
                tx: &mut sqlx::Transaction<'_, $db>,
                sender: &str,
                registered_at: i64,
                received_before: i64,
            ) -> Result<(), StorageError> {
                sqlx::query(
                    "UPDATE messages SET client_id = $2 || client_id \
                     WHERE sender = $1 AND created_at < $3 AND client_id NOT LIKE '~%'",
                )
                .bind(sender)
                .bind($crate::storage::earlier_holder_mark(registered_at))
                .bind(received_before)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Claims one user id inside `tx`: false if it is taken.
            async fn register_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                user: &NewUser,
            ) -> Result<bool, StorageError> {
                let inserted = sqlx::query(
                    "INSERT INTO users (user_id, identity_signing, identity_dh, identity_signature, \
                     registered_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(&user.user_id)
                .bind(&user.identity.signing)
                .bind(&user.identity.dh)
                .bind(&user.identity.signature)
                .bind(user.now)
                .execute(&mut **tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    return Ok(false);
                }
                let spk = &user.signed_prekey;
                sqlx::query(
                    "INSERT INTO signed_prekeys (user_id, key_id, public_key, created_at, signature) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&user.user_id)
                .bind(i64::from(spk.id))
                .bind(&spk.key)
                .bind(to_i64(spk.created_at))
                .bind(&spk.signature)
                .execute(&mut **tx)
                .await?;
                Self::insert_one_time_prekeys(tx, &user.user_id, &user.one_time_prekeys).await?;
                // Anything still queued for this id was addressed to an earlier holder's keys.
                sqlx::query("DELETE FROM messages WHERE recipient = $1")
                    .bind(&user.user_id)
                    .execute(&mut **tx)
                    .await?;
                // What an earlier holder sent stays for its recipients, marked as not this
                // holder's: its receipts and its status must not reach them. Everything queued
                // from the id now is the earlier holder's, whenever it was received.
                Self::mark_earlier_holder(tx, &user.user_id, user.now, i64::MAX).await?;
                Ok(true)
            }

        /// The user's one-time prekeys: how many, and the lowest id.
        async fn stock(
            connection: &mut <$db as sqlx::Database>::Connection,
            user_id: &str,
        ) -> Result<OneTimePrekeyStock, StorageError> {
            let (held, lowest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(key_id) FROM one_time_prekeys WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_one(&mut *connection)
            .await?;
            Ok(OneTimePrekeyStock {
                held: usize::try_from(held).unwrap_or(0),
                lowest_id: lowest.map(to_u32),
            })
        }

        async fn insert_one_time_prekeys(
            tx: &mut sqlx::Transaction<'_, $db>,
            user_id: &str,
            keys: &[StoredOneTimePrekey],
        ) -> Result<(), StorageError> {
            for chunk in fixed_chunks(keys) {
                let mut insert = QueryBuilder::<$db>::new(
                    "INSERT INTO one_time_prekeys (user_id, key_id, public_key) ",
                );
                insert.push_values(chunk, |mut row, key| {
                    row.push_bind(user_id)
                        .push_bind(i64::from(key.id))
                        .push_bind(&key.key);
                });
                insert.push(" ON CONFLICT DO NOTHING");
                insert.build().execute(&mut **tx).await?;
            }
            Ok(())
        }
        }

        #[async_trait]
        impl Storage for $storage {
            async fn health(&self) -> Result<(), StorageError> {
                self.queue_health()?;
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn register_users(&self, users: &[NewUser]) -> Result<Vec<bool>, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let mut claimed = Vec::with_capacity(users.len());
                for user in users {
                    claimed.push(Self::register_in(&mut tx, user).await?);
                }
                tx.commit().await?;
                Ok(claimed)
            }

            async fn identity(&self, user_id: &str) -> Result<Option<StoredIdentity>, StorageError> {
                let row = sqlx::query(
                    "SELECT identity_signing, identity_dh, identity_signature FROM users WHERE user_id = $1",
                )
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|row| StoredIdentity {
                    signing: row.get(0),
                    dh: row.get(1),
                    signature: row.get(2),
                }))
            }

            async fn claim_bundle(&self, user_id: &str) -> Result<Option<ClaimedBundle>, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let Some(row) = sqlx::query(
                    "SELECT u.identity_signing, u.identity_dh, u.identity_signature, \
                            s.key_id, s.public_key, s.created_at, s.signature \
                     FROM users u JOIN signed_prekeys s ON s.user_id = u.user_id WHERE u.user_id = $1",
                )
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    return Ok(None);
                };
                let one_time = sqlx::query(
                    $claim_one_time_prekey,
                )
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
                let remaining: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = $1")
                        .bind(user_id)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(Some(ClaimedBundle {
                    identity: StoredIdentity {
                        signing: row.get(0),
                        dh: row.get(1),
                        signature: row.get(2),
                    },
                    signed_prekey: StoredSignedPrekey {
                        id: to_u32(row.get(3)),
                        key: row.get(4),
                        created_at: to_u64(row.get(5)),
                        signature: row.get(6),
                    },
                    one_time_prekey: one_time.map(|row| StoredOneTimePrekey {
                        id: to_u32(row.get(0)),
                        key: row.get(1),
                    }),
                    remaining: usize::try_from(remaining).unwrap_or(0),
                }))
            }

            async fn add_one_time_prekeys(
                &self,
                user_id: &str,
                keys: &[StoredOneTimePrekey],
                max_stored: usize,
            ) -> Result<PrekeyUpload, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                // Uploads of one user are counted and inserted one at a time, so that two at
                // once cannot both see room under the cap.
                sqlx::query($lock_user).bind(user_id).execute(&mut *tx).await?;
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = $1")
                        .bind(user_id)
                        .fetch_one(&mut *tx)
                        .await?;
                let room = max_stored.saturating_sub(usize::try_from(count).unwrap_or(max_stored));
                let kept = keys.len().min(room);
                Self::insert_one_time_prekeys(&mut tx, user_id, &keys[..kept]).await?;
                let stock = Self::stock(&mut tx, user_id).await?;
                tx.commit().await?;
                Ok(PrekeyUpload { kept, stock })
            }

            async fn set_signed_prekey(
                &self,
                user_id: &str,
                prekey: &StoredSignedPrekey,
            ) -> Result<(), StorageError> {
                sqlx::query(
                    "UPDATE signed_prekeys SET key_id = $2, public_key = $3, created_at = $4, \
                     signature = $5 WHERE user_id = $1",
                )
                .bind(user_id)
                .bind(i64::from(prekey.id))
                .bind(&prekey.key)
                .bind(to_i64(prekey.created_at))
                .bind(&prekey.signature)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn one_time_prekey_stock(
                &self,
                user_id: &str,
            ) -> Result<OneTimePrekeyStock, StorageError> {
                let mut connection = self.pool.acquire().await?;
                Self::stock(&mut connection, user_id).await
            }

            async fn store_messages(
                &self,
                batch: &[NewMessage],
            ) -> Result<Vec<StoreOutcome>, StorageError> {
                let batch = QueueBatch { stores: batch.to_vec(), ..QueueBatch::default() };
                let committed = self.commit_batch(batch).await?;
                committed.durable.wait().await?;
                Ok(committed.outcomes)
            }

            async fn pending_messages(
                &self,
                recipient: &str,
                after_id: i64,
                limit: usize,
            ) -> Result<Vec<QueuedMessage>, StorageError> {
                let rows = sqlx::query(
                    "SELECT id, sender, envelope, created_at FROM messages \
                     WHERE recipient = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(recipient)
                .bind(after_id)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| QueuedMessage {
                        id: row.get(0),
                        sender: row.get(1),
                        envelope: row.get::<Option<String>, _>(2).unwrap_or_default(),
                        created_at: row.get(3),
                    })
                    .collect())
            }

            async fn pending_since(
                &self,
                recipients: &[&str],
                after_id: i64,
                created_before: i64,
                limit: usize,
            ) -> Result<Vec<(String, QueuedMessage)>, StorageError> {
                let mut found = Vec::new();
                for chunk in fixed_chunks(recipients) {
                    let mut select = QueryBuilder::<$db>::new(
                        "SELECT recipient, id, sender, envelope, created_at FROM messages \
                         WHERE recipient IN (",
                    );
                    let mut list = select.separated(", ");
                    for recipient in chunk {
                        list.push_bind(*recipient);
                    }
                    select.push(") AND id > ");
                    select.push_bind(after_id);
                    select.push(" AND created_at < ");
                    select.push_bind(created_before);
                    select.push(" ORDER BY id LIMIT ");
                    select.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                    for row in select.build().fetch_all(&self.pool).await? {
                        let message = QueuedMessage {
                            id: row.get(1),
                            sender: row.get(2),
                            envelope: row.get::<Option<String>, _>(3).unwrap_or_default(),
                            created_at: row.get(4),
                        };
                        found.push((row.get::<String, _>(0), message));
                    }
                }
                found.sort_unstable_by_key(|(_, message)| message.id);
                found.truncate(limit);
                Ok(found)
            }

            async fn last_message_id(&self) -> Result<i64, StorageError> {
                let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM messages")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(id.unwrap_or(0))
            }

            async fn pending_count(&self, recipient: &str) -> Result<usize, StorageError> {
                let count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM messages WHERE recipient = $1",
                )
                .bind(recipient)
                .fetch_one(&self.pool)
                .await?;
                Ok(usize::try_from(count).unwrap_or(0))
            }

            async fn recipients(&self, users: &[&str]) -> Result<Vec<(bool, usize)>, StorageError> {
                let mut registered: std::collections::HashSet<String> =
                    std::collections::HashSet::new();
                let mut pending: HashMap<String, usize> = HashMap::new();
                for chunk in fixed_chunks(users) {
                    let mut select =
                        QueryBuilder::<$db>::new("SELECT user_id FROM users WHERE user_id IN (");
                    let mut list = select.separated(", ");
                    for user in chunk {
                        list.push_bind(*user);
                    }
                    select.push(")");
                    for row in select.build().fetch_all(&self.pool).await? {
                        registered.insert(row.get(0));
                    }
                    let mut count = QueryBuilder::<$db>::new(
                        "SELECT recipient, COUNT(*) FROM messages WHERE recipient IN (",
                    );
                    let mut list = count.separated(", ");
                    for user in chunk {
                        list.push_bind(*user);
                    }
                    count.push(") GROUP BY recipient");
                    for row in count.build().fetch_all(&self.pool).await? {
                        let queued: i64 = row.get(1);
                        pending.insert(row.get(0), usize::try_from(queued).unwrap_or(0));
                    }
                }
                Ok(users
                    .iter()
                    .map(|user| match registered.contains(*user) {
                        true => (true, pending.get(*user).copied().unwrap_or(0)),
                        false => (false, 0),
                    })
                    .collect())
            }

            async fn acknowledge(
                &self,
                acks: &[(String, i64)],
                _now: i64,
            ) -> Result<Vec<Acknowledged>, StorageError> {
                let batch = QueueBatch { acks: acks.to_vec(), ..QueueBatch::default() };
                Ok(self.commit_batch(batch).await?.acknowledged)
            }

            async fn commit_batch(&self, batch: QueueBatch) -> Result<Committed, StorageError> {
                if batch.is_empty() {
                    return Ok(Committed { stores: batch.stores, ..Committed::default() });
                }
                self.commit_queue(batch).await
            }

            async fn message_status(
                &self,
                sender: &str,
                ids: &[i64],
            ) -> Result<Vec<(i64, MessageStatus)>, StorageError> {
                let mut found: HashMap<i64, MessageStatus> = HashMap::new();
                for chunk in fixed_chunks(ids) {
                    let mut select =
                        QueryBuilder::<$db>::new("SELECT id FROM messages WHERE sender = ");
                    select.push_bind(sender);
                    // An earlier holder's messages are not the asker's.
                    select.push(" AND client_id NOT LIKE '~%' AND id IN (");
                    let mut list = select.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    select.push(")");
                    for row in select.build().fetch_all(&self.pool).await? {
                        found.insert(row.get(0), MessageStatus::Pending);
                    }
                }
                Ok(ids
                    .iter()
                    .map(|id| {
                        (
                            *id,
                            found.get(id).copied().unwrap_or(MessageStatus::Delivered),
                        )
                    })
                    .collect())
            }

            async fn add_contacts(
                &self,
                pairs: &[(String, String)],
            ) -> Result<Vec<(String, String)>, StorageError> {
                let mut recorded = Vec::new();
                if pairs.is_empty() {
                    return Ok(recorded);
                }
                let mut tx = self.pool.begin_with($begin).await?;
                for chunk in fixed_chunks(pairs) {
                    let mut insert =
                        QueryBuilder::<$db>::new("INSERT INTO contacts (sender, recipient) ");
                    insert.push_values(chunk, |mut row, (sender, recipient)| {
                        row.push_bind(sender).push_bind(recipient);
                    });
                    insert.push(" ON CONFLICT DO NOTHING RETURNING sender, recipient");
                    let rows: Vec<(String, String)> =
                        insert.build_query_as().fetch_all(&mut *tx).await?;
                    recorded.extend(rows);
                }
                tx.commit().await?;
                Ok(recorded)
            }

            async fn written_to(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
                let rows = sqlx::query_scalar("SELECT recipient FROM contacts WHERE sender = $1")
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows)
            }

            async fn written_by(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
                let rows = sqlx::query_scalar("SELECT sender FROM contacts WHERE recipient = $1")
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows)
            }

            async fn purge(&self, created_before: i64) -> Result<u64, StorageError> {
                // Ids grow with time, so expired messages are the oldest ids: delete from the
                // front of the primary key until a message is young enough (no index on age).
                let mut expired = 0;
                loop {
                    let deleted = sqlx::query(
                        "DELETE FROM messages WHERE id IN \
                         (SELECT id FROM messages ORDER BY id LIMIT 1000) AND created_at < $1",
                    )
                    .bind(created_before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    expired += deleted;
                    if deleted < 1000 {
                        return Ok(expired);
                    }
                }
            }

            async fn release_user(&self, user_id: &str) -> Result<bool, StorageError> {
                let mut tx = self.pool.begin_with($begin).await?;
                // What it sent stays: its recipients can still read it (an owner who lost every
                // device keeps their last messages).
                sqlx::query("DELETE FROM messages WHERE recipient = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM contacts WHERE sender = $1 OR recipient = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                let deleted = sqlx::query("DELETE FROM users WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(deleted > 0)
            }

            async fn release_memory(&self) {
                self.release_queue_memory().await;
            }

            fn take_message_ids(&self, count: usize) -> Option<std::ops::Range<i64>> {
                self.take_queue_ids(count)
            }

            fn takes_message_ids(&self) -> bool {
                self.has_own_queue()
            }

            async fn close(&self) {
                self.close_queue().await;
                self.pool.close().await;
            }

            async fn total_pending(&self) -> Result<u64, StorageError> {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(to_u64(count))
            }
        }
    };
}

pub(crate) use impl_storage;
