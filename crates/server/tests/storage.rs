//! One storage suite, run against both backends: SQLite (a temp file) and PostgreSQL (the
//! machine's server on 127.0.0.1:5432, in a database of its own, dropped afterwards; override
//! with SOTTO_TEST_POSTGRES).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use sotto_server::storage::{
    self, MessageStatus, NewMessage, NewUser, OneTimePrekeyStock, QueueBatch, RegisterError,
    Storage, StoreOutcome, StoredIdentity, StoredOneTimePrekey, StoredSignedPrekey,
};

fn admin_url() -> String {
    std::env::var("SOTTO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A PostgreSQL database made for one test run and dropped after it.
struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> Self {
        let name = format!("sotto_test_{}_{}", std::process::id(), rand::random::<u32>());
        let admin =
            sqlx::PgPool::connect(&admin_url()).await.expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = admin_url();
        let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
        Self { name, url }
    }

    async fn drop_now(self) {
        let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
    }
}

fn user(name: &str) -> NewUser {
    NewUser {
        user_id: name.to_owned(),
        identity: StoredIdentity {
            signing: format!("{name}-s"),
            dh: format!("{name}-d"),
            signature: "sig".into(),
        },
        signed_prekey: StoredSignedPrekey {
            id: 1,
            key: "spk".into(),
            created_at: 1_767_225_600,
            signature: "spk-sig".into(),
        },
        one_time_prekeys: (1..=20)
            .map(|id| StoredOneTimePrekey { id, key: format!("opk{id}") })
            .collect(),
        now: 1,
    }
}

fn message(from: &str, to: &str, client_id: &str) -> NewMessage {
    NewMessage {
        id: None,
        recipient: to.to_owned(),
        sender: from.to_owned(),
        client_id: client_id.to_owned(),
        envelope: RawValue::from_string(format!(r#"{{"from":"{from}","id":"{client_id}"}}"#))
            .unwrap(),
        created_at: 1_000,
    }
}

async fn run_suite(store: Arc<dyn Storage>) {
    store.health().await.unwrap();

    // Claims: unique, even when concurrent.
    store.register_user(&user("alice")).await.unwrap();
    assert!(matches!(store.register_user(&user("alice")).await, Err(RegisterError::Taken)));
    let claims: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.register_user(&user("contested")).await.is_ok() })
        })
        .collect();
    let mut wins = 0;
    for claim in claims {
        wins += usize::from(claim.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one concurrent claim wins");
    assert_eq!(store.identity("alice").await.unwrap().unwrap().signing, "alice-s");
    assert!(store.identity("nobody").await.unwrap().is_none());

    // One-time prekeys: 20 keys, 30 concurrent claimers; each key once, then none.
    store.register_user(&user("bob")).await.unwrap();
    let claimers: Vec<_> = (0..30)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_bundle("bob").await.unwrap().unwrap() })
        })
        .collect();
    let mut handed_out = Vec::new();
    for claimer in claimers {
        let bundle = claimer.await.unwrap();
        assert_eq!(bundle.signed_prekey.key, "spk");
        handed_out.extend(bundle.one_time_prekey.map(|k| k.id));
    }
    assert_eq!(handed_out.len(), 20);
    assert_eq!(handed_out.iter().collect::<HashSet<_>>().len(), 20, "no key twice");
    assert_eq!(
        store.one_time_prekey_stock("bob").await.unwrap(),
        OneTimePrekeyStock { held: 0, lowest_id: None }
    );
    assert!(store.claim_bundle("nobody").await.unwrap().is_none());
    let more: Vec<_> =
        (100..110).map(|id| StoredOneTimePrekey { id, key: format!("k{id}") }).collect();
    let upload = store.add_one_time_prekeys("bob", &more, 5).await.unwrap();
    assert_eq!(upload.kept, 5, "capped: the upload's first five");
    assert_eq!(upload.stock, OneTimePrekeyStock { held: 5, lowest_id: Some(100) });
    // Bundles hand out the lowest id first, so the lowest left says which were handed out.
    let handed = store.claim_bundle("bob").await.unwrap().unwrap().one_time_prekey.unwrap();
    assert_eq!(handed.id, 100);
    assert_eq!(
        store.one_time_prekey_stock("bob").await.unwrap(),
        OneTimePrekeyStock { held: 4, lowest_id: Some(101) }
    );
    let upload = store.add_one_time_prekeys("bob", &more[5..], 5).await.unwrap();
    assert_eq!(upload.kept, 1, "room for one");
    assert_eq!(upload.stock, OneTimePrekeyStock { held: 5, lowest_id: Some(101) });
    // Uploads at once (one connection's pipelined requests, or several devices) share the cap.
    let uploads: Vec<_> = (0..8u32)
        .map(|upload| {
            let store = store.clone();
            let keys: Vec<_> = (0..10)
                .map(|n| 1_000 + upload * 10 + n)
                .map(|id| StoredOneTimePrekey { id, key: format!("k{id}") })
                .collect();
            tokio::spawn(async move { store.add_one_time_prekeys("bob", &keys, 30).await })
        })
        .collect();
    for upload in uploads {
        upload.await.unwrap().unwrap();
    }
    assert_eq!(store.one_time_prekey_stock("bob").await.unwrap().held, 30, "never above the cap");
    store
        .set_signed_prekey(
            "bob",
            &StoredSignedPrekey {
                id: 2,
                key: "spk2".into(),
                created_at: 2,
                signature: "s2".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.claim_bundle("bob").await.unwrap().unwrap().signed_prekey.id, 2);

    // The queue: batch store with a duplicate inside and across batches.
    let batch = [
        message("alice", "bob", "m1"),
        message("alice", "bob", "m2"),
        message("alice", "bob", "m1"),
    ];
    let outcomes = store.store_messages(&batch).await.unwrap();
    assert!(matches!(outcomes[0], StoreOutcome::Stored(_)));
    assert!(matches!(outcomes[1], StoreOutcome::Stored(_)));
    assert_eq!(outcomes[2], StoreOutcome::Duplicate(outcomes[0].id()));
    let again = store.store_messages(&[message("alice", "bob", "m2")]).await.unwrap();
    assert_eq!(again[0], StoreOutcome::Duplicate(outcomes[1].id()));
    // The same client id from another sender is another message.
    let other = store.store_messages(&[message("carol", "bob", "m1")]).await.unwrap();
    assert!(matches!(other[0], StoreOutcome::Stored(_)));
    // A big batch (several statement chunks) keeps its order.
    let many: Vec<_> = (0..150).map(|i| message("alice", "dave", &format!("bulk{i}"))).collect();
    let ids: Vec<i64> = store.store_messages(&many).await.unwrap().iter().map(|o| o.id()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase in batch order");

    let pending = store.pending_messages("bob", 0, 10).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[0].envelope, r#"{"from":"alice","id":"m1"}"#);
    assert_eq!(store.pending_count("bob").await.unwrap(), 3);
    assert_eq!(store.pending_messages("bob", pending[0].id, 10).await.unwrap().len(), 2);
    assert_eq!(store.total_pending().await.unwrap(), 153);
    // Recipients looked up together: registered or not, and what is queued for each (dave is
    // not registered: the store takes his messages, the relay refuses them before).
    assert_eq!(
        store.recipients(&["bob", "nobody", "alice", "dave", "bob"]).await.unwrap(),
        [(true, 3), (false, 0), (true, 0), (false, 0), (true, 3)]
    );
    assert!(store.recipients(&[]).await.unwrap().is_empty());
    // Recent messages of some recipients only (a clustered node's re-push), oldest first.
    let recent = store.pending_since(&["dave", "bob", "nobody"], 0, i64::MAX, 5).await.unwrap();
    let who: Vec<&str> = recent.iter().map(|(recipient, _)| recipient.as_str()).collect();
    assert_eq!(who, ["bob", "bob", "bob", "dave", "dave"]);
    assert!(recent.windows(2).all(|w| w[0].1.id < w[1].1.id), "oldest first");
    assert_eq!(recent[0].1.id, pending[0].id);
    let later = store.pending_since(&["bob"], pending[0].id, i64::MAX, 10).await.unwrap();
    assert_eq!(later.len(), 2, "after an id");
    assert!(store.pending_since(&["bob"], 0, 1_000, 10).await.unwrap().is_empty(), "too young");
    assert!(store.pending_since(&["alice"], 0, i64::MAX, 10).await.unwrap().is_empty());

    // Acks count only for the recipient's own pending messages.
    let acked = store
        .acknowledge(
            &[
                ("bob".into(), pending[0].id),
                ("mallory".into(), pending[1].id),
                ("bob".into(), 999_999),
            ],
            5_000,
        )
        .await
        .unwrap();
    assert_eq!(acked.len(), 1);
    assert_eq!((acked[0].sender.as_str(), acked[0].client_id.as_str()), ("alice", "m1"));
    assert!(
        store.acknowledge(&[("bob".into(), pending[0].id)], 5_001).await.unwrap().is_empty(),
        "once"
    );
    assert_eq!(store.pending_count("bob").await.unwrap(), 2);
    let statuses =
        store.message_status("alice", &[pending[0].id, pending[1].id, 424_242]).await.unwrap();
    assert_eq!(
        statuses,
        vec![
            (pending[0].id, MessageStatus::Delivered),
            (pending[1].id, MessageStatus::Pending),
            (424_242, MessageStatus::Delivered)
        ]
    );
    assert_eq!(
        store.message_status("carol", &[pending[1].id]).await.unwrap()[0].1,
        MessageStatus::Delivered,
        "only a sender learns that its message is still queued"
    );

    // Contacts are directed (sender, recipient), each recorded once; only new pairs come back.
    let pair = |sender: &str, recipient: &str| (sender.to_owned(), recipient.to_owned());
    let mut recorded = store
        .add_contacts(&[
            pair("alice", "bob"),
            pair("bob", "alice"),
            pair("carol", "alice"),
            pair("alice", "bob"),
        ])
        .await
        .unwrap();
    recorded.sort();
    assert_eq!(recorded, [pair("alice", "bob"), pair("bob", "alice"), pair("carol", "alice")]);
    let recorded =
        store.add_contacts(&[pair("carol", "alice"), pair("carol", "bob")]).await.unwrap();
    assert_eq!(recorded, [pair("carol", "bob")], "a known pair is not new");
    assert_eq!(store.written_to("alice").await.unwrap(), ["bob"]);
    let mut writers = store.written_by("alice").await.unwrap();
    writers.sort();
    assert_eq!(writers, ["bob", "carol"]);
    let mut written = store.written_to("carol").await.unwrap();
    written.sort();
    assert_eq!(written, ["alice", "bob"]);
    assert!(store.written_by("carol").await.unwrap().is_empty());

    // Giving memory back after a burst (SQLite: the queue connection's page cache) changes
    // nothing stored.
    store.release_memory().await;
    assert_eq!(store.total_pending().await.unwrap(), 152);
    assert_eq!(store.identity("alice").await.unwrap().unwrap().signing, "alice-s");

    // Expiry.
    assert_eq!(store.purge(1_000).await.unwrap(), 0, "nothing older than the cut-off");
    assert_eq!(store.purge(1_001).await.unwrap(), 152);
    assert_eq!(store.total_pending().await.unwrap(), 0);

    // Releasing a user drops its keys and its queue; what it sent stays for its recipients.
    store.store_messages(&[message("bob", "alice", "late")]).await.unwrap();
    let unread = store.store_messages(&[message("alice", "carol", "unread")]).await.unwrap()[0];
    assert!(store.release_user("alice").await.unwrap());
    assert_eq!(store.pending_count("carol").await.unwrap(), 1, "what alice sent stays");
    assert!(!store.release_user("alice").await.unwrap());
    assert!(store.identity("alice").await.unwrap().is_none());
    assert_eq!(store.pending_count("alice").await.unwrap(), 0);
    assert!(store.written_to("alice").await.unwrap().is_empty(), "released with its contacts");
    assert!(store.written_by("alice").await.unwrap().is_empty());
    assert!(!store.written_to("bob").await.unwrap().contains(&"alice".to_owned()));
    store.register_user(&user("alice")).await.unwrap();
    // Registered anew: what the earlier alice sent stays for carol, but is not the new
    // alice's. A status request answers as for a message never sent, a send under the same
    // client id is a new message, and deleting the earlier one withholds its receipt.
    let unread = unread.id();
    assert_eq!(
        store.message_status("alice", &[unread]).await.unwrap(),
        [(unread, MessageStatus::Delivered)]
    );
    let own = store.store_messages(&[message("alice", "carol", "unread")]).await.unwrap()[0];
    assert!(matches!(own, StoreOutcome::Stored(id) if id != unread), "{own:?}");
    assert_eq!(
        store.message_status("alice", &[own.id()]).await.unwrap(),
        [(own.id(), MessageStatus::Pending)]
    );
    assert_eq!(store.pending_count("carol").await.unwrap(), 2);
    let deletes = vec![unread, own.id(), own.id() + 1_000];
    let committed =
        store.commit_batch(QueueBatch { deletes, ..QueueBatch::default() }).await.unwrap();
    assert_eq!(
        committed.withheld,
        [unread, own.id() + 1_000],
        "the earlier holder's, and a gone one"
    );
    assert_eq!(store.pending_count("carol").await.unwrap(), 0);
    // The queue writer marks what an earlier holder sent before the registration and the
    // writer committed after it: only what was received before the registration.
    let before = store.store_messages(&[message("alice", "carol", "raced")]).await.unwrap()[0];
    let after = NewMessage { created_at: 3_000, ..message("alice", "carol", "fresh") };
    let after = store.store_messages(&[after]).await.unwrap()[0];
    let marking =
        QueueBatch { earlier_holders: vec![("alice".into(), 2_000)], ..QueueBatch::default() };
    store.commit_batch(marking).await.unwrap();
    assert_eq!(
        store.message_status("alice", &[before.id(), after.id()]).await.unwrap(),
        [(before.id(), MessageStatus::Delivered), (after.id(), MessageStatus::Pending)]
    );
    let deletes = vec![before.id(), after.id()];
    let committed =
        store.commit_batch(QueueBatch { deletes, ..QueueBatch::default() }).await.unwrap();
    assert_eq!(committed.withheld, [before.id()]);
    store.close().await;
}

/// A database made before contacts had a direction (migration 1 only, pairs stored once with
/// the lower id first) keeps every pair, both ways, after migrating.
#[tokio::test]
async fn an_old_sqlite_database_keeps_its_contacts_both_ways() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("old.db").display());
    {
        let mut old = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let init = include_str!("../migrations/sqlite/0001_init.sql");
        let migrator =
            sqlx::migrate::Migrator::with_migrations(vec![sqlx::migrate::Migration::new(
                1,
                "init".into(),
                sqlx::migrate::MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(init)),
                false,
            )]);
        migrator.run(&mut old).await.unwrap();
        sqlx::query(
            "INSERT INTO contacts (user_a, user_b) VALUES ('alice', 'bob'), ('bob', 'carol')",
        )
        .execute(&mut old)
        .await
        .unwrap();
        // Three messages (AUTOINCREMENT ids 1 to 3); the newest acknowledged and deleted.
        for client_id in ["m1", "m2", "m3"] {
            sqlx::query(
                "INSERT INTO messages (recipient, sender, client_id, envelope, created_at) \
                 VALUES ('bob', 'alice', $1, '{}', 1000)",
            )
            .bind(client_id)
            .execute(&mut old)
            .await
            .unwrap();
        }
        sqlx::query("DELETE FROM messages WHERE id = 3").execute(&mut old).await.unwrap();
        old.close().await.unwrap();
    }
    let store = storage::open(&url).await.unwrap();
    // Queued messages keep their ids, and no id handed out before is handed out again, not
    // even the deleted 3 (the relay's own id blocks replaced AUTOINCREMENT in migration 3).
    let queued = store.pending_messages("bob", 0, 10).await.unwrap();
    assert_eq!(queued.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2]);
    let outcomes = store.store_messages(&[message("carol", "bob", "m4")]).await.unwrap();
    let [StoreOutcome::Stored(id)] = outcomes[..] else { panic!("{outcomes:?}") };
    assert!(id > 3, "id {id} was handed out before");
    assert_eq!(store.written_to("bob").await.unwrap().len(), 2);
    let mut writers = store.written_by("bob").await.unwrap();
    writers.sort();
    assert_eq!(writers, ["alice", "carol"]);
    assert_eq!(store.written_to("alice").await.unwrap(), ["bob"]);
    store.close().await;
}

#[tokio::test]
async fn sqlite_backend() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("suite.db").display());
    run_suite(storage::open(&url).await.unwrap()).await;
}

/// The queue's group commit, on the SQLite queue thread: stores, matched deletes and acks in
/// one transaction, while the pool writes to the same file; after `close`, a clear error.
#[tokio::test]
async fn sqlite_queue_thread_commits_with_the_pool_and_refuses_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("queue.db").display());
    let store = storage::open(&url).await.unwrap();
    for name in ["alice", "bob"] {
        store.register_user(&user(name)).await.unwrap();
    }
    let first = store
        .commit_batch(QueueBatch {
            stores: vec![message("alice", "bob", "a"), message("alice", "bob", "b")],
            ..QueueBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(first.stores.len(), 2, "the messages come back for the push");
    let [StoreOutcome::Stored(a), StoreOutcome::Stored(b)] = first.outcomes[..] else {
        panic!("both stored: {:?}", first.outcomes);
    };
    // Registrations go through the pool while the queue thread writes: they take turns.
    let registering = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..20 {
                store.register_user(&user(&format!("user{n}"))).await.unwrap();
            }
        })
    };
    let second = store
        .commit_batch(QueueBatch {
            stores: vec![message("alice", "bob", "a"), message("bob", "alice", "c")],
            deletes: vec![a],
            acks: vec![("alice".into(), b), ("bob".into(), b)],
            earlier_holders: Vec::new(),
        })
        .await
        .unwrap();
    registering.await.unwrap();
    assert_eq!(second.outcomes[0], StoreOutcome::Duplicate(a), "a resend is stored once");
    assert!(matches!(second.outcomes[1], StoreOutcome::Stored(c) if c > b));
    assert_eq!(second.acknowledged.len(), 1, "only the recipient's own acknowledgement counts");
    assert_eq!((second.acknowledged[0].id, second.acknowledged[0].recipient.as_str()), (b, "bob"));
    assert!(store.pending_messages("bob", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.pending_count("alice").await.unwrap(), 1);
    assert!(store.identity("user19").await.unwrap().is_some());

    store.close().await;
    let closed = store
        .commit_batch(QueueBatch {
            stores: vec![message("alice", "bob", "late")],
            ..QueueBatch::default()
        })
        .await;
    let closed = closed.expect_err("a closed store refuses the batch");
    assert!(closed.is_closed(), "{closed:?}");
    // Reads through the pool too (a disconnect handler's presence lookup, while the relay
    // stops): said to be closed, which the relay takes as moot rather than a failure.
    let closed = store.written_to("alice").await.expect_err("a closed store refuses reads");
    assert!(closed.is_closed(), "{closed:?}");
}

/// The SQLite queue's end of the message ids it has reserved, read through a connection of
/// its own (so only what is committed counts).
async fn reserved_end(url: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let (end,): (i64,) =
        sqlx::query_as("SELECT reserved_end FROM message_ids").fetch_one(&pool).await.unwrap();
    pool.close().await;
    end
}

/// Ids handed out ahead of storing (the write-behind's) come from a block whose reservation is
/// already committed, in order and never twice, and a reopened store (after a crash, say)
/// numbers past all of them even though none of those messages was ever written.
#[tokio::test]
async fn sqlite_ids_taken_ahead_are_reserved_on_disk_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ids.db").display());
    let store = storage::open(&url).await.unwrap();
    assert!(store.takes_message_ids());
    let mut taken: Vec<std::ops::Range<i64>> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Past two block boundaries (a block is 4,096 ids), 1,000 ids at a time.
    while taken.iter().map(|range| range.end - range.start).sum::<i64>() < 10_000 {
        assert!(std::time::Instant::now() < deadline, "ids could not be taken: {taken:?}");
        let Some(range) = store.take_message_ids(1_000) else {
            // The next block waits until the last one's reservation is flushed.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        };
        assert_eq!(range.end - range.start, 1_000);
        if let Some(last) = taken.last() {
            assert!(range.start >= last.end, "in order, never twice: {last:?} then {range:?}");
        }
        let end = reserved_end(&url).await;
        assert!(range.end <= end, "ids {range:?} handed out past the committed reservation {end}");
        taken.push(range);
    }
    let highest = taken.last().unwrap().end - 1;
    store.close().await;
    drop(store);

    let reopened = storage::open(&url).await.unwrap();
    for name in ["alice", "bob"] {
        reopened.register_user(&user(name)).await.unwrap();
    }
    let stored = reopened
        .commit_batch(QueueBatch {
            stores: vec![message("alice", "bob", "after")],
            ..QueueBatch::default()
        })
        .await
        .unwrap();
    let [StoreOutcome::Stored(id)] = stored.outcomes[..] else {
        panic!("stored: {:?}", stored.outcomes);
    };
    assert!(id > highest, "a message stored after reopening got id {id}, not past {highest}");
    let ahead = loop {
        if let Some(range) = reopened.take_message_ids(1) {
            break range;
        }
        assert!(std::time::Instant::now() < deadline, "no id could be taken after reopening");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert!(ahead.start > id, "an id taken after reopening ({ahead:?}) is past {id}");
    reopened.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_backend() {
    run_suite(storage::open("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test]
async fn postgres_backend() {
    let database = PgDatabase::create().await;
    let store = storage::open(&database.url).await.unwrap();
    run_suite(store).await;
    database.drop_now().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused_clearly() {
    let error = storage::open("mysql://localhost/x").await.err().unwrap();
    assert!(error.to_string().contains("unsupported database URL"));
}
