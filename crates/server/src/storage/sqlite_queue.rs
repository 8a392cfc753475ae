//! The SQLite queue's write path: one connection, used by one committer at a time.
//!
//! Through sqlx, every statement is a round trip between the async runtime and sqlx's worker
//! thread, so a group commit (begin, look up, insert, delete, commit) cost several thread
//! wake-ups, which at low rates, with few messages per batch, each message paid for. Here the
//! transaction runs with cached prepared statements, row by row, which SQLite does in
//! microseconds, on one of two threads:
//!
//! - a small batch (at most [`INLINE_MAX_JOBS`] rows), the usual case below saturation, on the
//!   queue writer's own thread, if SQLite's write lock is free at that instant: no hand-over at
//!   all (at 5,000 messages/s over 500 pairs, five alternating runs each: p50 259–321 →
//!   201–235 µs, p99 0.63–1.01 → 0.64–0.71 ms);
//! - a large batch, or one that would have to wait for the lock or for the flusher, on the
//!   queue thread, handed over once and answered once, so the runtime never waits on SQLite's
//!   lock or on a long transaction.
//!
//! Commits only write the log (`synchronous = NORMAL`); another thread flushes it to disk
//! while the next batch is committed (see [`Flusher`]). The writer pushes a batch
//! to its recipients once committed and answers its senders once flushed, so the flush, most
//! of a message's time in the relay, no longer stands between sender and recipient.
//!
//! Everything else (reads, registrations, prekeys) still goes through the sqlx pool; SQLite's
//! write lock (`BEGIN IMMEDIATE` on both sides) keeps the two in turn: the pool and the queue
//! thread wait for it (busy timeouts), a small batch on the writer's thread does not (no busy
//! timeout: it is handed to the queue thread instead).

use std::cell::Cell;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{
    Acknowledged, Committed, Durable, QueueBatch, StorageError, StoreOutcome, earlier_holder_mark,
};

/// How far message ids jump each time the queue opens. Ids handed out but not yet flushed
/// when the power went are forgotten by SQLite; the jump makes sure none of them is ever
/// handed out again (a client drops a second message under an id it already has). It must
/// exceed the ids that can be waiting for a flush, which [`MAX_UNFLUSHED`] bounds, plus the
/// ids of the one block handed out before storing whose reservation may not be flushed yet
/// ([`QueueThread::take_ids`]).
pub(crate) const ID_JUMP_ON_OPEN: i64 = 1 << 20;
/// Ids the queue connection reserves at a time in `message_ids` (one row update per block instead
/// of AUTOINCREMENT's read and write of `sqlite_sequence` per message). A power cut can lose a
/// reservation that was not flushed along with the ids handed out from it, which the jump on
/// the next opening covers: `ID_BLOCK` plus every unflushed id is far below `ID_JUMP_ON_OPEN`.
const ID_BLOCK: i64 = 4_096;
/// Reserves `?1` message ids past every id reserved so far; returns the first.
pub(super) const RESERVE_MESSAGE_IDS: &str =
    "UPDATE message_ids SET reserved_end = reserved_end + ?1 RETURNING reserved_end - ?1";
/// Most committed batches waiting for their flush before the queue thread waits too:
/// at most `MAX_UNFLUSHED × MAX_BATCH` (32,768) ids, far below [`ID_JUMP_ON_OPEN`].
const MAX_UNFLUSHED: usize = 64;
/// Log pages after which the queue checkpoints the log into the database file (SQLite's
/// default for its automatic checkpoint is 1,000). SQLite's automatic checkpoint runs inside
/// whichever commit crosses the mark and holds back that batch's pushes for milliseconds; with
/// small batches committed on the runtime thread it would also stall every socket. So the
/// queue connection has no automatic checkpoint: the queue thread checkpoints, after answering
/// the batch that crossed the mark, and only the batches behind it wait. (1,000 pages made
/// that nine times a second at 5,000 messages/s, about 1.8 log pages each; 4,000 gave p99
/// 1.24–1.89 → 1.04–1.77 ms over seven alternating runs each; 10,000 was worse, each
/// checkpoint copying more.)
const QUEUE_CHECKPOINT_PAGES: u32 = 4_000;

thread_local! {
    /// Pages in the log after the last commit on this thread, as SQLite's log hook reports it.
    /// Written by the hook inside a commit and read right after it, on the same thread, so it
    /// is the queue's whichever thread commits.
    static LOG_PAGES: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The queue connection's log hook (it replaces SQLite's automatic checkpoint).
fn note_log_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    LOG_PAGES.set(Some(u32::try_from(pages).unwrap_or(0)));
    Ok(())
}
/// The flusher thread's nice value. Its work (mostly the kernel's, for `fdatasync`) only
/// decides when senders hear "stored"; the runtime threads, which push to recipients, should
/// not wait for it on a busy core. It still gets about a tenth of a contended core, far more
/// than a flush per batch needs.
#[cfg(target_os = "linux")]
const FLUSHER_NICENESS: i32 = 10;

/// Most jobs (messages stored plus acknowledgements) in a batch that the caller commits itself
/// instead of handing it to the queue thread. A small batch takes SQLite tens of microseconds,
/// less than the two thread hand-overs it would cost; a large one would hold the runtime
/// thread, and with it every socket, for milliseconds.
const INLINE_MAX_JOBS: usize = 16;
/// The queue connection's busy timeout on the queue thread: it waits out a pool write (a
/// registration, a prekey upload) holding SQLite's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch handed to the thread, and where its result goes.
struct Request {
    batch: QueueBatch,
    reply: oneshot::Sender<Result<Committed, StorageError>>,
}

/// The queue's connection and the message ids it has reserved, used by one committer at a time:
/// the queue thread, or the caller for a small batch.
struct Writer {
    connection: Connection,
    ids: IdBlock,
    /// Pages in the log after the last commit (0 after a checkpoint, until the next commit).
    log_pages: u32,
    /// When the last block reserved by [`QueueThread::take_ids`] is on disk. Ids handed out
    /// without storing anything ask for no flush of their own, so the next block is reserved
    /// only once this one's reservation is flushed: a power cut can then lose at most the
    /// current block's reservation, which [`ID_JUMP_ON_OPEN`] covers.
    reservation_flushed: Option<oneshot::Receiver<Result<(), ErrorKind>>>,
}

impl Writer {
    /// Commits `batch` in one transaction (see [`commit_in_transaction`]).
    fn commit(&mut self, batch: &QueueBatch) -> rusqlite::Result<Applied> {
        LOG_PAGES.set(None);
        let committed = commit_in_transaction(&mut self.connection, batch, &mut self.ids)?;
        if let Some(pages) = LOG_PAGES.take() {
            self.log_pages = pages;
        }
        Ok(committed)
    }

    /// Gives the page cache back to the allocator (after a burst, `memory.rs`); the next commit
    /// reads the pages it needs again, from the operating system's cache of the file.
    fn release_cache(&mut self) {
        if let Err(error) = self.connection.release_memory() {
            tracing::warn!(%error, "releasing the queue's page cache failed");
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.log_pages >= QUEUE_CHECKPOINT_PAGES
    }

    /// Copies the log into the database file, as far as no reader still needs it (a passive
    /// checkpoint: it waits for nothing). Once all of it is copied, the next commit starts the
    /// log over from its beginning.
    fn checkpoint(&mut self) {
        self.log_pages = 0;
        if let Err(error) =
            self.connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            // Another connection's checkpoint running, or a disk error that the next commit
            // will meet too; the next checkpoint catches up either way.
            tracing::warn!(%error, "checkpointing the queue's log failed");
        }
    }
}

/// The queue thread and the way to it.
pub(crate) struct QueueThread {
    /// `None` once closed.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    writer: Arc<Mutex<Writer>>,
    flusher: Arc<Flusher>,
}

impl std::fmt::Debug for QueueThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueThread").finish_non_exhaustive()
    }
}

impl QueueThread {
    /// Opens a connection to the (already migrated) database at `path` and starts the queue
    /// thread and its flusher.
    pub(crate) fn open(path: &Path) -> Result<Self, StorageError> {
        let mut connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "cache_size", -65_536)?;
        connection.pragma_update(None, "foreign_keys", true)?;
        // Enough for the handful of statements below, so none is ever prepared twice.
        connection.set_prepared_statement_cache_capacity(16);
        connection.pragma_update(None, "synchronous", "FULL")?;
        jump_message_ids(&mut connection)?;
        // From here on commits only write the log; the flusher makes them durable (WAL is a
        // property of the database file, which the pool set).
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints are the queue thread's (`QUEUE_CHECKPOINT_PAGES`), never a commit's: the
        // hook takes the place of SQLite's automatic checkpoint.
        connection.wal_hook(Some(note_log_pages));

        let flusher = Arc::new(Flusher::default());
        let writer = Arc::new(Mutex::new(Writer {
            connection,
            ids: IdBlock::default(),
            log_pages: 0,
            reservation_flushed: None,
        }));
        let wal = write_ahead_log(path);
        let (requests, inbox) = mpsc::channel::<Request>();
        let queue_flusher = flusher.clone();
        let queue_writer = writer.clone();
        let queue = std::thread::Builder::new()
            .name("sotto-queue".into())
            .spawn(move || serve(&queue_writer, &inbox, &queue_flusher))
            .map_err(StorageError::Thread)?;
        let running = flusher.clone();
        let flush = std::thread::Builder::new()
            .name("sotto-flush".into())
            .spawn(move || running.run(&wal))
            .map_err(StorageError::Thread)?;
        Ok(Self {
            requests: Mutex::new(Some(requests)),
            threads: Mutex::new(vec![queue, flush]),
            writer,
            flusher,
        })
    }

    /// Commits a batch: a small one right here when SQLite's write lock is free, any other on
    /// the queue thread.
    pub(crate) async fn commit(&self, batch: QueueBatch) -> Result<Committed, StorageError> {
        let batch = match self.commit_here(batch) {
            Ok(committed) => return committed,
            Err(batch) => batch,
        };
        let (reply, answer) = oneshot::channel();
        {
            let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let sender = requests.as_ref().ok_or(StorageError::Closed)?;
            sender.send(Request { batch, reply }).map_err(|_| StorageError::Closed)?;
        }
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Commits a small batch on the calling thread, without waiting for anything: not for the
    /// write lock (held by a pool write, the batch goes to the queue thread, which waits), not
    /// for the flusher (too many batches unflushed, the queue thread waits for room). Gives the
    /// batch back when it is not committed here.
    fn commit_here(
        &self,
        batch: QueueBatch,
    ) -> Result<Result<Committed, StorageError>, QueueBatch> {
        let jobs = batch.stores.len()
            + batch.acks.len()
            + batch.deletes.len()
            + batch.earlier_holders.len();
        if jobs > INLINE_MAX_JOBS || !self.flusher.has_room() {
            return Err(batch);
        }
        if self.requests.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Ok(Err(StorageError::Closed));
        }
        // The queue thread holds the writer only while it commits a batch handed to it (and
        // checkpoints after it), and the queue writer hands over one batch at a time, so this
        // finds it taken only behind a checkpoint; the batch then waits on the queue thread.
        let Ok(mut writer) = self.writer.try_lock() else { return Err(batch) };
        if writer.checkpoint_due() {
            return Err(batch);
        }
        // Not waiting for the lock: the queue thread sets its own timeout back.
        let result =
            writer.connection.busy_timeout(Duration::ZERO).and_then(|()| writer.commit(&batch));
        drop(writer);
        match result {
            // The write lock was taken: nothing was applied (the transaction rolled back).
            Err(error) if is_busy(&error) => Err(batch),
            Ok(applied) => Ok(Ok(committed(batch, applied, &self.flusher))),
            Err(error) => Ok(Err(error.into())),
        }
    }

    /// Hands out `count` ids from the reserved block without storing anything (the writer
    /// pushes such messages before writing them), or `None` when the block has too few left or
    /// a commit holds the connection: then the messages are stored first, and that commit
    /// reserves the next block. Ids come in order, above every id handed out before, from a
    /// block whose reservation is committed; if a crash loses that commit before it is
    /// flushed, [`ID_JUMP_ON_OPEN`] still puts the next opening past them.
    pub(crate) fn take_ids(&self, count: usize) -> Option<std::ops::Range<i64>> {
        let count = i64::try_from(count).ok().filter(|count| *count <= ID_BLOCK)?;
        let mut writer = self.writer.try_lock().ok()?;
        if writer.ids.end - writer.ids.next < count {
            // The last reservation must be on disk before the next (see `reservation_flushed`),
            // and the flusher must have room for this one's flush.
            if let Some(flushed) = writer.reservation_flushed.as_mut() {
                match flushed.try_recv() {
                    Ok(Ok(())) => writer.reservation_flushed = None,
                    _ => return None,
                }
            }
            if !self.flusher.has_room() {
                return None;
            }
            // A new block, in a transaction of its own, if SQLite's write lock is free now.
            let Writer { connection, ids, .. } = &mut *writer;
            let reserved = connection.busy_timeout(Duration::ZERO).and_then(|()| {
                let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut block = IdBlock::default();
                block.take(&tx)?;
                tx.commit()?;
                block.untake();
                Ok(block)
            });
            match reserved {
                Ok(block) => {
                    *ids = block;
                    writer.reservation_flushed = Some(self.flusher.request());
                }
                Err(error) => {
                    if !is_busy(&error) {
                        tracing::warn!(%error, "reserving message ids failed");
                    }
                    return None;
                }
            }
        }
        let ids = &mut writer.ids;
        let first = ids.next;
        ids.next += count;
        Some(first..ids.next)
    }

    /// Whether the log could not be flushed once: from then on every batch is refused as not
    /// durable until the relay restarts.
    pub(crate) fn flush_failed(&self) -> bool {
        self.flusher.has_failed()
    }

    /// Releases the queue connection's page cache, waiting for a commit that is running.
    pub(crate) fn release_memory(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).release_cache();
    }

    /// Stops taking batches, lets the threads finish (commit and flush) those they have, and
    /// waits for them.
    pub(crate) async fn close(&self) {
        drop(self.requests.lock().unwrap_or_else(|e| e.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// The database's write-ahead log: `PATH-wal`.
fn write_ahead_log(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Moves the next message id [`ID_JUMP_ON_OPEN`] past every id reserved on disk, durably.
fn jump_message_ids(connection: &mut Connection) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("UPDATE message_ids SET reserved_end = reserved_end + ?1", [ID_JUMP_ON_OPEN])?;
    tx.commit()
}

/// Ids the queue connection has reserved and not handed out yet: `next..end`.
#[derive(Debug, Clone, Copy, Default)]
struct IdBlock {
    next: i64,
    end: i64,
}

impl IdBlock {
    /// The next id, reserving a new block inside `tx` when this one is used up. The caller
    /// keeps the changed block only if `tx` commits: a rolled-back reservation never happened.
    fn take(&mut self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
        if self.next >= self.end {
            let mut reserve = tx.prepare_cached(RESERVE_MESSAGE_IDS)?;
            let start: i64 = reserve.query_row([ID_BLOCK], |row| row.get(0))?;
            *self = IdBlock { next: start, end: start + ID_BLOCK };
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }

    /// Gives back the id just taken (its insert turned out to be a duplicate).
    fn untake(&mut self) {
        self.next -= 1;
    }
}

/// Whether SQLite refused because another connection holds the lock.
fn is_busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// A committed batch, with when it will be on disk.
fn committed(batch: QueueBatch, applied: Applied, flusher: &Flusher) -> Committed {
    // A batch that only deletes needs no flush of its own: losing it brings acknowledged
    // messages back, which clients drop by id, and the next batch that stores flushes it
    // anyway. A batch that stores, even only duplicates (whose first copy may still be
    // waiting), is durable after the next flush.
    let durable =
        if batch.stores.is_empty() { Durable::now() } else { Durable::after(flusher.request()) };
    let Applied { outcomes, acknowledged, withheld } = applied;
    Committed { stores: batch.stores, outcomes, acknowledged, withheld, durable }
}

/// The queue thread: one batch at a time, until every sender is gone; then it lets the
/// flusher finish.
fn serve(writer: &Mutex<Writer>, inbox: &mpsc::Receiver<Request>, flusher: &Flusher) {
    while let Ok(Request { batch, reply }) = inbox.recv() {
        let mut writer = writer.lock().unwrap_or_else(|e| e.into_inner());
        let result = writer
            .connection
            .busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| writer.commit(&batch))
            .map(|applied| committed(batch, applied, flusher))
            .map_err(StorageError::from);
        // The writer may have given up waiting (shutdown); the commit stands either way.
        let _ = reply.send(result);
        // After the answer, so that the batch is pushed while the log is copied; the writer
        // finds the connection taken meanwhile and hands its next batch here.
        if writer.checkpoint_due() {
            writer.checkpoint();
        }
    }
    flusher.close();
    tracing::debug!("queue thread stopped");
}

/// Flushes the write-ahead log for committed batches, beside the next commits.
///
/// A commit in `synchronous = NORMAL` writes the log without waiting for the disk, so the
/// batch can be pushed to its recipients at once; its senders hear "stored" only after a
/// flush that started after the commit. One flush serves every batch committed before it
/// began (group flushing), and while it runs the next batches are committed. A
/// checkpoint moves log pages into the database file only after flushing the log and syncs
/// the database file before the log is reused, so flushing the log file covers every
/// committed batch.
#[derive(Default)]
struct Flusher {
    state: Mutex<FlushState>,
    changed: Condvar,
    /// Set for good once a flush failed (see `run`): the relay's health check reports it.
    failed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct FlushState {
    /// Batches committed and not yet covered by a flush that has started.
    waiting: Vec<oneshot::Sender<Result<(), ErrorKind>>>,
    /// Batches in the flush that is running.
    flushing: usize,
    /// No more batches will come.
    closed: bool,
}

impl Flusher {
    /// Whether a flush has failed, so that no batch will be durable until a restart.
    fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Registers a committed batch; the receiver learns when it is on disk. Waits while too
    /// many batches are waiting (the disk is the bottleneck; the writer's inbox fills).
    fn request(&self) -> oneshot::Receiver<Result<(), ErrorKind>> {
        let (flushed, receiver) = oneshot::channel();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.waiting.len() + state.flushing >= MAX_UNFLUSHED {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.waiting.push(flushed);
        self.changed.notify_all();
        receiver
    }

    /// Whether a committed batch can be registered without waiting.
    fn has_room(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting.len() + state.flushing < MAX_UNFLUSHED
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.changed.notify_all();
    }

    /// The flusher thread: flushes while batches wait, until closed and all are flushed.
    fn run(&self, wal: &Path) {
        lower_this_threads_priority();
        // After `fdatasync` fails, the kernel may have dropped the pages it could not write,
        // and a later flush can succeed without them. So from then on no batch is called
        // durable: every sender is told to retry until the relay restarts and SQLite recovers
        // the log from what is really on disk.
        let mut failed: Option<ErrorKind> = None;
        loop {
            let batches = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                while state.waiting.is_empty() && !state.closed {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.waiting.is_empty() {
                    break;
                }
                let batches = std::mem::take(&mut state.waiting);
                state.flushing = batches.len();
                batches
            };
            let result = match failed {
                Some(kind) => Err(kind),
                // Opened each time: SQLite may truncate or recreate the file between flushes.
                None => File::open(wal).and_then(|log| log.sync_data()).map_err(|error| {
                    tracing::error!(
                        %error,
                        "flushing the write-ahead log failed; no message will be acknowledged \
                         as stored until the relay restarts"
                    );
                    failed = Some(error.kind());
                    self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    error.kind()
                }),
            };
            for batch in batches {
                // The writer may be gone (shutdown).
                let _ = batch.send(result);
            }
            self.state.lock().unwrap_or_else(|e| e.into_inner()).flushing = 0;
            self.changed.notify_all();
        }
        tracing::debug!("flusher stopped");
    }
}

/// Lowers the calling thread's scheduling priority (on Linux the nice value is per thread).
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(thread), FLUSHER_NICENESS) {
            tracing::debug!(%error, "could not lower the flusher's priority");
        }
    }
}

/// What a batch's transaction did (see [`Committed`]).
struct Applied {
    outcomes: Vec<StoreOutcome>,
    acknowledged: Vec<Acknowledged>,
    withheld: Vec<i64>,
}

/// One transaction for the whole batch; on any error it rolls back and nothing is applied.
fn commit_in_transaction(
    connection: &mut Connection,
    batch: &QueueBatch,
    ids: &mut IdBlock,
) -> rusqlite::Result<Applied> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut block = *ids;
    let mut outcomes = Vec::with_capacity(batch.stores.len());
    let mut acknowledged = Vec::with_capacity(batch.acks.len());
    let mut withheld = Vec::new();
    {
        // A resend (same sender and client id) hits the unique index and inserts nothing; its
        // first copy's id is looked up, which only happens for duplicates.
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (id, recipient, sender, client_id, envelope, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (sender, client_id) DO NOTHING",
        )?;
        let mut first_copy =
            tx.prepare_cached("SELECT id FROM messages WHERE sender = ?1 AND client_id = ?2")?;
        for message in &batch.stores {
            let id = match message.id {
                Some(id) => id,
                None => block.take(&tx)?,
            };
            let inserted = insert.execute(params![
                id,
                message.recipient,
                message.sender,
                message.client_id,
                message.envelope.get(),
                message.created_at,
            ])?;
            outcomes.push(if inserted == 1 {
                StoreOutcome::Stored(id)
            } else {
                if message.id.is_none() {
                    block.untake();
                }
                StoreOutcome::Duplicate(
                    first_copy
                        .query_row(params![message.sender, message.client_id], |row| row.get(0))?,
                )
            });
        }
        let mut mark = tx.prepare_cached(
            "UPDATE messages SET client_id = ?2 || client_id \
             WHERE sender = ?1 AND created_at < ?3 AND client_id NOT LIKE '~%'",
        )?;
        for (sender, registered_at) in &batch.earlier_holders {
            mark.execute(params![sender, earlier_holder_mark(*registered_at), registered_at])?;
        }
        // Matched from memory by the writer: the row says whether the sender is to be told
        // (`sent_by_earlier_holder`, in SQL).
        let mut delete =
            tx.prepare_cached("DELETE FROM messages WHERE id = ?1 RETURNING client_id LIKE '~%'")?;
        for id in &batch.deletes {
            let earlier: Option<bool> = delete.query_row([id], |row| row.get(0)).optional()?;
            if earlier.is_none_or(|earlier| earlier) {
                withheld.push(*id);
            }
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
    *ids = block;
    Ok(Applied { outcomes, acknowledged, withheld })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::NewMessage;

    fn migrated_database(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("queue.db");
        let connection = Connection::open(&path).unwrap();
        connection.pragma_update(None, "journal_mode", "WAL").unwrap();
        connection.execute_batch(include_str!("../../migrations/sqlite/0001_init.sql")).unwrap();
        connection
            .execute_batch(include_str!("../../migrations/sqlite/0002_directed_contacts.sql"))
            .unwrap();
        connection
            .execute_batch(include_str!("../../migrations/sqlite/0003_relay_message_ids.sql"))
            .unwrap();
        path
    }

    fn message(client_id: &str) -> NewMessage {
        NewMessage {
            id: None,
            recipient: "bob".into(),
            sender: "alice".into(),
            client_id: client_id.into(),
            envelope: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            created_at: 1,
        }
    }

    fn store(client_id: &str) -> QueueBatch {
        QueueBatch { stores: vec![message(client_id)], ..QueueBatch::default() }
    }

    /// Every opening moves the ids on by the jump, so an id handed out before a power cut and
    /// lost with its unflushed batch is never handed out again.
    #[tokio::test]
    async fn ids_jump_each_time_the_queue_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = migrated_database(&dir);

        let queue = QueueThread::open(&path).unwrap();
        let first = queue.commit(store("a")).await.unwrap();
        first.durable.wait().await.unwrap();
        assert_eq!(first.outcomes, [StoreOutcome::Stored(ID_JUMP_ON_OPEN + 1)]);
        queue.close().await;

        let queue = QueueThread::open(&path).unwrap();
        // The first opening reserved a block after its jump; the second jumps past that block.
        let second = queue.commit(store("b")).await.unwrap();
        assert_eq!(second.outcomes, [StoreOutcome::Stored(2 * ID_JUMP_ON_OPEN + ID_BLOCK + 1)]);
        // A resend is answered with its first copy's id, across the reopening.
        let resend = queue.commit(store("a")).await.unwrap();
        assert_eq!(resend.outcomes, [StoreOutcome::Duplicate(ID_JUMP_ON_OPEN + 1)]);
        queue.close().await;
    }

    /// Releasing the page cache loses nothing: the queue goes on from the file (a resend is
    /// still known, the next message gets the next id).
    #[tokio::test]
    async fn the_queue_goes_on_after_its_cache_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let queue = QueueThread::open(&migrated_database(&dir)).unwrap();
        let first = queue.commit(store("a")).await.unwrap();
        first.durable.wait().await.unwrap();
        queue.release_memory();

        let resend = queue.commit(store("a")).await.unwrap();
        assert_eq!(resend.outcomes, [StoreOutcome::Duplicate(first.outcomes[0].id())]);
        let next = queue.commit(store("b")).await.unwrap();
        assert_eq!(next.outcomes, [StoreOutcome::Stored(first.outcomes[0].id() + 1)]);
        queue.close().await;
    }

    /// A batch that stores (even only a duplicate) is durable only after a flush; one that
    /// only deletes is answered at once.
    #[tokio::test]
    async fn only_batches_that_store_wait_for_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let queue = QueueThread::open(&migrated_database(&dir)).unwrap();
        let stored = queue.commit(store("a")).await.unwrap();
        assert!(stored.durable.0.is_some(), "a storing batch waits for the flush");
        let id = stored.outcomes[0].id();
        stored.durable.wait().await.unwrap();

        let resend = queue.commit(store("a")).await.unwrap();
        assert!(resend.durable.0.is_some(), "a duplicate's first copy may still be waiting");

        let acks = QueueBatch { acks: vec![("bob".into(), id)], ..QueueBatch::default() };
        let acknowledged = queue.commit(acks).await.unwrap();
        assert_eq!(acknowledged.acknowledged.len(), 1);
        assert!(acknowledged.durable.0.is_none(), "deleting alone needs no flush");
        queue.close().await;
    }

    /// A small batch is committed by the caller, a large one by the queue thread, and both
    /// draw their ids from the same reservation: ids keep growing by one across the two.
    #[tokio::test]
    async fn small_and_large_batches_share_one_sequence_of_ids() {
        let dir = tempfile::tempdir().unwrap();
        let queue = QueueThread::open(&migrated_database(&dir)).unwrap();
        let large = QueueBatch {
            stores: (0..=INLINE_MAX_JOBS).map(|n| message(&format!("large-{n}"))).collect(),
            ..QueueBatch::default()
        };
        let mut ids = Vec::new();
        for batch in [store("first"), large, store("last")] {
            let committed = queue.commit(batch).await.unwrap();
            ids.extend(committed.outcomes.iter().copied().map(StoreOutcome::id));
            committed.durable.wait().await.unwrap();
        }
        let expected: Vec<i64> = (ID_JUMP_ON_OPEN + 1..).take(INLINE_MAX_JOBS + 3).collect();
        assert_eq!(ids, expected);
        queue.close().await;
    }

    /// While another connection (the pool's registrations and uploads) holds SQLite's write
    /// lock, a small batch neither fails nor blocks its caller on the lock: the queue thread
    /// waits for the lock and commits it once the other write is done.
    #[tokio::test]
    async fn a_small_batch_waits_out_another_connections_write_on_the_queue_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = migrated_database(&dir);
        let queue = QueueThread::open(&path).unwrap();
        let mut other = Connection::open(&path).unwrap();
        let registration = other.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();

        let mut commit = tokio::spawn(async move {
            let committed = queue.commit(store("a")).await;
            (queue, committed)
        });
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut commit).await;
        assert!(waited.is_err(), "the batch waits for the write lock");

        registration.commit().unwrap();
        let (queue, committed) = commit.await.unwrap();
        let committed = committed.unwrap();
        assert_eq!(committed.outcomes, [StoreOutcome::Stored(ID_JUMP_ON_OPEN + 1)]);
        committed.durable.wait().await.unwrap();
        queue.close().await;
    }

    /// Small batches are committed without SQLite's automatic checkpoint; the queue thread
    /// checkpoints instead, so the log is reused from its start rather than growing with
    /// everything ever committed.
    #[tokio::test]
    async fn the_log_stays_bounded_when_every_batch_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = migrated_database(&dir);
        let queue = QueueThread::open(&path).unwrap();
        let mut largest_log = 0;
        // About 80 MB of log if it were never reused.
        for round in 0..3_000 {
            let batch = QueueBatch {
                stores: (0..INLINE_MAX_JOBS).map(|n| message(&format!("{round}-{n}"))).collect(),
                ..QueueBatch::default()
            };
            let committed = queue.commit(batch).await.unwrap();
            assert_eq!(committed.outcomes.len(), INLINE_MAX_JOBS);
            committed.durable.wait().await.unwrap();
            largest_log = largest_log.max(std::fs::metadata(write_ahead_log(&path)).unwrap().len());
        }
        queue.close().await;
        // A log frame is a 4 KiB page and its 24-byte header; the log may pass the mark by the
        // batch that crosses it and those committed while the checkpoint runs.
        let bound = u64::from(QUEUE_CHECKPOINT_PAGES + 1_000) * (4_096 + 24);
        assert!(largest_log < bound, "the log grew to {largest_log} bytes");
    }

    /// Once closed, the queue commits nothing, small batches included.
    #[tokio::test]
    async fn a_closed_queue_refuses_small_batches_too() {
        let dir = tempfile::tempdir().unwrap();
        let queue = QueueThread::open(&migrated_database(&dir)).unwrap();
        queue.close().await;
        assert!(matches!(queue.commit(store("a")).await, Err(StorageError::Closed)));
    }

    /// The batches' durability is the flush's own result: a log that cannot be flushed fails
    /// every batch that waited for it, and a flush that works answers them all.
    #[test]
    fn batches_learn_what_their_flush_did() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present-wal"), b"frames").unwrap();
        for (log, expected) in [
            (dir.path().join("missing-wal"), Err(ErrorKind::NotFound)),
            (dir.path().join("present-wal"), Ok(())),
        ] {
            let flusher = Arc::new(Flusher::default());
            let waiting: Vec<_> = (0..3).map(|_| flusher.request()).collect();
            flusher.close();
            let running = flusher.clone();
            std::thread::spawn(move || running.run(&log)).join().unwrap();
            for mut batch in waiting {
                assert_eq!(batch.try_recv().unwrap(), expected);
            }
        }
    }

    /// The flusher runs at a lower priority than the threads that push to recipients.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_flusher_yields_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("queue.db-wal");
        let flusher = Arc::new(Flusher::default());
        flusher.close();
        let niceness = std::thread::spawn(move || {
            flusher.run(&log);
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(niceness, FLUSHER_NICENESS);
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert!(own < FLUSHER_NICENESS, "only the flusher's thread is lowered");
    }

    /// Once a flush has failed, no later batch is called durable, even when the log can be
    /// flushed again: what the failed flush held may be gone from the kernel's cache.
    #[test]
    fn a_failed_flush_fails_every_later_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("queue.db-wal");
        let flusher = Arc::new(Flusher::default());
        let running = flusher.clone();
        let path = log.clone();
        let thread = std::thread::spawn(move || running.run(&path));

        assert!(!flusher.has_failed());
        let first = flusher.request();
        assert_eq!(first.blocking_recv().unwrap(), Err(ErrorKind::NotFound));
        assert!(flusher.has_failed(), "reported to the health check");
        std::fs::write(&log, b"frames").unwrap();
        let later = flusher.request();
        assert_eq!(later.blocking_recv().unwrap(), Err(ErrorKind::NotFound));
        assert!(flusher.has_failed(), "for good");

        flusher.close();
        thread.join().unwrap();
    }
}
