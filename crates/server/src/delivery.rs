//! The queue writer: every message store, acknowledgement and final catch-up of a logging-in
//! socket goes through one task, in the order the sockets sent them.
//!
//! Why one task: it makes per-sender order a property of a channel rather than of locks
//! (socketioxide runs each event's handler as its own task, so handlers can finish out of
//! order; the `message:send` extractor therefore enqueues here synchronously, in wire order),
//! and it turns many small writes into few transactions: the writer takes every job waiting,
//! commits them together (group commit), then pushes to the recipients at once and answers
//! the senders once the batch is on disk. A recipient may have the message a little before
//! that (with SQLite the disk flush runs beside the next commits; see
//! `storage::sqlite_queue`). If the relay's copy is then lost in a power cut, the sender,
//! never told "stored", sends it again and the recipient's client drops the copy as a
//! duplicate (its ratchet key is spent).
//!
//! With SQLite on one node, a message for a recipient caught up here is pushed before it is
//! written and held by the writer (`crate::unwritten`, `Config::write_behind`): acknowledged
//! in time, it is never written, and its sender is answered then. A sender's answer therefore
//! always means "on disk, or in the recipient's hands".
//!
//! A socket that logs in first reads its backlog outside the writer (`crate::catch_up`, paced by
//! its acknowledgements), then sends an `Attach` job: the writer marks it caught up (live
//! pushes reach it from then on) and pushes whatever was stored in between.
//! Because live pushes come from this same task, nothing stored by this node can slip between
//! the catch-up and the first live push, so a recipient sees each sender's messages in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use serde_json::value::RawValue;
use smallvec::SmallVec;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef};
use tokio::sync::mpsc;

use crate::events::{
    self, DeliveredPush, ErrorCode, Failure, PresencePush, Receipt, ReceivePush, ReceivedMessage,
    SendAnswer,
};
use crate::metrics::CatchingUp;
use crate::state::{
    Audience, RECENT_LIMIT, RecentMessage, RecipientInfo, Relay, notice_room, user_room,
};
use crate::storage::{
    Acknowledged, Committed, Durable, NewMessage, QueueBatch, QueuedMessage, StoreOutcome,
    earlier_holder_mark, sent_by_earlier_holder,
};
use crate::unwritten::{Held, Unwritten};

/// Most jobs the writer takes into one batch.
pub const MAX_BATCH: usize = 512;
/// Messages per `message:receive` push when catching up.
pub const PAGE: usize = 64;
/// How long acknowledgements may wait for a batch that stores. Committed alone, a batch of
/// acknowledgements rewrites the same B-tree pages (the recipients' index leaves, the newest
/// table pages) that the next batch of messages rewrites again; committed together, the log
/// gets each page once. Their receipts are that much later; nothing else waits for them.
const ACKS_WAIT: Duration = Duration::from_millis(10);

/// Work for the queue writer.
pub(crate) enum Job<A: Adapter> {
    /// Store a message, then acknowledge its sender and push it to its recipient.
    Store {
        /// The message.
        message: NewMessage,
        /// Where the sender waits for the result.
        ack: AckSender<A>,
        /// When the relay received it (for the latency histogram).
        received: Instant,
    },
    /// A recipient acknowledged messages.
    Ack {
        /// `(recipient, message id)` pairs.
        acks: Vec<(String, i64)>,
        /// Answered once the acknowledgements are committed.
        answer: AckSender<A>,
    },
    /// Answer once every job before this one is done (graceful shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
    /// A user id was registered anew: messages held for its earlier holder are dropped, as
    /// the registration deleted those stored for them (they were sealed for other keys), and
    /// those held from it are marked as the registration marked the stored ones
    /// ([`crate::storage::earlier_holder_mark`]).
    Forget {
        /// The id.
        user: String,
        /// When it was registered.
        registered_at: i64,
    },
    /// A logged-in socket has caught up to `after`: mark it so (live messages reach it from
    /// then on) and push the rest.
    Attach {
        /// The socket.
        socket: SocketRef<A>,
        /// Its user.
        user: Arc<str>,
        /// The last message id it was sent.
        after: i64,
        /// Stops counting it as catching up once it is attached.
        catching_up: CatchingUp,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What waits for a committed batch to be on disk. These are answered strictly in commit
/// order, so a sender hears "stored" for a message before "delivered", and a shutdown flush
/// is answered only once everything before it is on disk.
struct AfterFlush<A: Adapter> {
    /// When the batch is on disk.
    durable: Durable,
    /// The senders of the batch's messages: their answers, and when each message came in.
    answers: Vec<(AckSender<A>, Instant, SendAnswer)>,
    /// Acknowledgements committed with the batch, to report to their senders.
    receipts: Vec<Acknowledged>,
    /// Shutdown flushes waiting for everything before them.
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl<A: Adapter> AfterFlush<A> {
    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.receipts.is_empty() && self.flushes.is_empty()
    }
}

/// Runs the writer until every sender of its inbox is gone, then returns once every answer
/// is given (graceful shutdown drains the inbox this way).
pub(crate) async fn run_writer<A: Adapter>(
    relay: Arc<Relay<A>>,
    mut inbox: mpsc::Receiver<Job<A>>,
) {
    let (after_flush, flushed) = mpsc::unbounded_channel();
    let answering = tokio::spawn(answer_when_durable(relay.clone(), flushed));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Acknowledgements held back to ride with the next batch that stores (see `ACKS_WAIT`).
    let mut held: Vec<Job<A>> = Vec::new();
    let mut held_since: Option<Instant> = None;
    // Messages pushed before they were written (see `crate::unwritten`).
    let mut unwritten: Unwritten<Ticket<A>> = Unwritten::default();
    let wait = relay.config.write_behind;
    let mut acknowledges_unwritten = false;
    loop {
        let deadline = [held_since.map(|since| since + ACKS_WAIT), unwritten.next_due(wait)]
            .into_iter()
            .flatten()
            .min();
        let received = match deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline.into(), inbox.recv_many(&mut batch, MAX_BATCH))
                    .await
                    .ok()
            }
            None => Some(inbox.recv_many(&mut batch, MAX_BATCH).await),
        };
        let closed = received == Some(0);
        let only_acks = batch.iter().all(|job| matches!(job, Job::Ack { .. }));
        // Acknowledgements of held messages need no write: they go at once, so that their
        // messages are not written meanwhile (only the new jobs are looked at: those held
        // back were looked at when they came).
        acknowledges_unwritten |= !unwritten.is_empty()
            && batch.iter().any(|job| match job {
                Job::Ack { acks, .. } => acks.iter().any(|(user, id)| unwritten.holds(user, *id)),
                _ => false,
            });
        held.append(&mut batch);
        if received.is_some()
            && !closed
            && only_acks
            && held.len() < MAX_BATCH
            && !acknowledges_unwritten
        {
            held_since.get_or_insert_with(Instant::now);
            continue;
        }
        held_since = None;
        acknowledges_unwritten = false;
        // Messages that waited too long are refused, and the batch is topped up with younger
        // ones, so that an overloaded database still commits full batches.
        while refuse_stale(&relay, &mut held) > 0 {
            let before = held.len();
            while held.len() < MAX_BATCH {
                let Ok(job) = inbox.try_recv() else { break };
                held.push(job);
            }
            if held.len() == before {
                break;
            }
        }
        if !held.is_empty() {
            relay.metrics.batch_size.observe(held.len() as f64);
        }
        // Also with no job: held messages may be due to be written.
        process(&relay, std::mem::take(&mut held), &mut unwritten, closed, &after_flush).await;
        relay.held_unwritten.store(unwritten.len(), Ordering::Relaxed);
        if closed {
            break;
        }
    }
    drop(after_flush);
    let _ = answering.await;
    tracing::debug!("queue writer stopped");
}

/// Refuses, with the retryable `busy`, the messages in `jobs` that waited for the writer
/// longer than `max_send_backlog`; returns how many. Their senders keep them and retry, so an
/// overloaded database shows as refusals rather than as seconds of delay. (Refusing every send
/// at the door while the writer is behind was tried: it let the inbox run dry, the database
/// committed small batches and delivered a third less.)
fn refuse_stale<A: Adapter>(relay: &Relay<A>, jobs: &mut Vec<Job<A>>) -> usize {
    let limit = relay.limits().max_send_backlog;
    let now = Instant::now();
    let is_stale = |job: &Job<A>| match job {
        Job::Store { received, .. } => now.duration_since(*received) > limit,
        _ => false,
    };
    if !jobs.iter().any(is_stale) {
        return 0;
    }
    let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(jobs).into_iter().partition(is_stale);
    *jobs = fresh;
    let busy = Failure::busy();
    let count = stale.len();
    for job in stale {
        if let Job::Store { ack, .. } = job {
            refuse(relay, ack, &busy);
        }
    }
    count
}

/// Most batches whose receipts go out together (see [`answer_when_durable`]).
const RECEIPT_BATCHES: usize = 64;

/// Answers each committed batch's senders once it is on disk, in commit order. The channel
/// stays short: the SQLite queue stops committing while too many batches wait for the disk.
///
/// Batches that are waiting when it gets to them are answered together and their receipts go
/// out as one `message:delivered` push per sender instead of one per batch: under load the
/// writer commits small batches quickly (acknowledged messages need no write), and a sender's
/// connection would otherwise get a receipt packet per batch, filling its outgoing buffer
/// (the relay ends a connection whose buffer is full) and costing a frame each.
async fn answer_when_durable<A: Adapter>(
    relay: Arc<Relay<A>>,
    mut batches: mpsc::UnboundedReceiver<AfterFlush<A>>,
) {
    let mut waiting = Vec::with_capacity(RECEIPT_BATCHES);
    while batches.recv_many(&mut waiting, RECEIPT_BATCHES).await > 0 {
        let mut receipts = Vec::new();
        let mut flushes = Vec::new();
        for batch in waiting.drain(..) {
            answer_batch(&relay, batch.durable, batch.answers).await;
            receipts.extend(batch.receipts);
            flushes.extend(batch.flushes);
        }
        // After every answer of the group, so a sender hears "stored" before "delivered".
        delivered(&relay, &receipts).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Gives a committed batch's senders their answers once it is on disk.
async fn answer_batch<A: Adapter>(
    relay: &Relay<A>,
    durable: Durable,
    answers: Vec<(AckSender<A>, Instant, SendAnswer)>,
) {
    match durable.wait().await {
        Ok(()) => {
            for (ack, received, answer) in answers {
                let _ = ack.send(&answer);
                relay.metrics.store_seconds.observe(received.elapsed().as_secs_f64());
            }
        }
        Err(error) => {
            // The batch is committed and was pushed, but may not survive a power cut:
            // the senders retry, and a resend is answered with the same id.
            relay.metrics.storage_errors.inc();
            tracing::warn!(%error, messages = answers.len(), "a batch may not be on disk");
            let failure = Failure::new(
                ErrorCode::StorageUnavailable,
                "storage unavailable; retry (a resend is never stored twice)",
            );
            for (ack, ..) in answers {
                refuse(relay, ack, &failure);
            }
        }
    }
}

async fn process<A: Adapter>(
    relay: &Arc<Relay<A>>,
    jobs: Vec<Job<A>>,
    unwritten: &mut Unwritten<Ticket<A>>,
    closing: bool,
    after_flush: &mpsc::UnboundedSender<AfterFlush<A>>,
) {
    let mut stores: Vec<(NewMessage, AckSender<A>, Instant)> = Vec::new();
    let mut acks: Vec<(String, i64)> = Vec::new();
    let mut ack_answers = Vec::new();
    let mut attaches = Vec::new();
    let mut flushes = Vec::new();
    let mut forgotten = Vec::new();
    for job in jobs {
        match job {
            Job::Flush(done) => flushes.push(done),
            Job::Forget { user, registered_at } => {
                // Received before the registration: the earlier holder's, marked like the ones
                // stored and held.
                let mark = earlier_holder_mark(registered_at);
                let earlier = |m: &NewMessage| m.sender == user && m.created_at < registered_at;
                for (message, ..) in stores.iter_mut().filter(|(m, ..)| earlier(m)) {
                    message.client_id.insert_str(0, &mark);
                }
                forgotten.push((user, registered_at));
            }
            Job::Store { message, ack, received } => stores.push((message, ack, received)),
            Job::Ack { acks: more, answer } => {
                acks.extend(more);
                ack_answers.push(answer);
            }
            Job::Attach { socket, user, after, catching_up } => {
                attaches.push((socket, user, after, catching_up));
            }
        }
    }
    for (user, registered_at) in &forgotten {
        forget_held(relay, unwritten, user);
        unwritten.mark_sender(user, *registered_at);
    }
    let (messages, tickets) = admit(relay, unwritten, stores).await;
    // Which messages may be resends of one held or stored recently, looked at before this
    // batch's acknowledgements take their first copies out of view.
    let resends = possible_resends(relay, unwritten, &messages);
    // Acknowledgements of held messages (never written: nothing to delete, and their senders
    // are answered now) and of messages this node stored recently are matched here; the rest
    // are matched by the database.
    let mut answers: Vec<(AckSender<A>, Instant, SendAnswer)> = Vec::new();
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut never_written = Vec::new();
    {
        let mut recent = relay.recent.lock().unwrap_or_else(|e| e.into_inner());
        for (recipient, id) in acks {
            if let Some(held) = unwritten.acknowledge(&recipient, id) {
                let NewMessage { sender, client_id, .. } = held.message;
                let (ack, received) = held.ticket;
                answers.push((ack, received, SendAnswer { ok: true, id, duplicate: false }));
                never_written.push(Acknowledged { id, sender, client_id, recipient });
                continue;
            }
            match recent.get(id) {
                Some(entry) if entry.recipient == recipient => {
                    if let Some(entry) = recent.remove(id) {
                        known.push(Acknowledged {
                            id,
                            sender: entry.sender,
                            client_id: entry.client_id,
                            recipient: entry.recipient,
                        });
                    }
                }
                Some(_) => {}
                None => unknown.push((recipient, id)),
            }
        }
    }
    relay.metrics.messages_never_written.inc_by(never_written.len() as u64);
    // Answered here and now, not behind earlier batches waiting for their flush: they depend
    // on no write (so a failed commit or flush cannot contradict them), and held back behind a
    // slow flush they went out in bursts that overfilled their senders' connections.
    for (ack, received, answer) in answers {
        let _ = ack.send(&answer);
        relay.metrics.store_seconds.observe(received.elapsed().as_secs_f64());
    }
    delivered(relay, &never_written).await;
    let (mut late, fresh, fresh_tickets) =
        push_before_writing(relay, unwritten, messages, tickets, &resends).await;
    // Held messages are written once due, and all of them before a shutdown flush answers.
    if closing || !flushes.is_empty() {
        late.extend(unwritten.take_all());
    } else {
        late.extend(unwritten.take_due(Instant::now(), relay.config.write_behind));
    }
    let late_count = late.len();
    let late_recipients: Vec<String> = late.iter().map(|h| h.message.recipient.clone()).collect();
    let (late_messages, late_tickets): (Vec<NewMessage>, Vec<(Ticket<A>, u64)>) =
        late.into_iter().map(|held| (held.message, (held.ticket, held.send))).unzip();
    let deletes: Vec<i64> = known.iter().map(|a| a.id).collect();
    let mut stores = late_messages;
    stores.extend(fresh);
    let batch = QueueBatch { stores, deletes, acks: unknown, earlier_holders: forgotten };
    let mut after =
        AfterFlush { durable: Durable::now(), answers: Vec::new(), receipts: Vec::new(), flushes };
    if batch.is_empty() {
        for answer in ack_answers {
            let _ = answer.send(&crate::events::Done::OK);
        }
    } else {
        let (messages, acks) = (batch.stores.len(), batch.deletes.len() + batch.acks.len());
        // One transaction for the whole batch: the group commit.
        match relay.storage.commit_batch(batch).await {
            Ok(Committed { mut stores, mut outcomes, acknowledged, withheld, durable }) => {
                // A lost deletion only brings a message back, which its recipient drops.
                for answer in ack_answers {
                    let _ = answer.send(&crate::events::Done::OK);
                }
                let fresh = stores.split_off(late_count);
                let fresh_outcomes = outcomes.split_off(late_count);
                after.answers.extend(written_late(relay, stores, late_tickets, &outcomes));
                after.answers.extend(stored(relay, fresh, fresh_tickets, &fresh_outcomes).await);
                withhold_receipts(&mut known, &withheld);
                after.receipts.extend(known);
                after.receipts.extend(acknowledged);
                after.durable = durable;
            }
            Err(error) => {
                relay.metrics.storage_errors.inc();
                tracing::warn!(%error, messages, acks, "committing a batch failed");
                let failure = Failure::new(
                    ErrorCode::StorageUnavailable,
                    "storage unavailable; nothing stored; retry",
                );
                // The held messages were counted as queued; now nobody holds them (their
                // senders send them again).
                relay.metrics.queue_depth.dec_by(late_count as i64);
                for recipient in &late_recipients {
                    relay.recipients.add_pending(recipient, -1);
                }
                for ((ack, _), _) in late_tickets {
                    refuse(relay, ack, &failure);
                }
                for (ack, _) in fresh_tickets {
                    refuse(relay, ack, &failure);
                }
                // Unrecorded acknowledgements leave their messages queued: they are pushed
                // again and the client recognises them.
                for answer in ack_answers {
                    refuse(relay, answer, &failure);
                }
            }
        }
    }
    for (socket, user, after, catching_up) in attaches {
        attach(relay, unwritten, socket, &user, after).await;
        drop(catching_up);
    }
    if !after.is_empty() {
        // Only fails once the answering task is gone, which outlives the writer.
        let _ = after_flush.send(after);
    }
}

/// The write-behind (see [`crate::unwritten`]): pushes the admitted messages of recipients
/// connected here at once and holds them, under ids taken before storing, waiting for their
/// acknowledgement. Returns what must be written now, in this order: held messages that must
/// go first (older messages of a recipient whose new ones are written now), then the messages
/// to store and push the usual way, with their senders.
///
/// A recipient's messages of the batch are stored first, the usual way, when any of them may
/// be a resend of a message still held or recently stored (a resend is answered with its
/// first copy's id and never pushed twice), when the recipient has no socket caught up here
/// to take the push, or when the relay is clustered (PostgreSQL numbers messages as it
/// stores them, and another node's sockets must read them from the queue).
async fn push_before_writing<A: Adapter>(
    relay: &Arc<Relay<A>>,
    unwritten: &mut Unwritten<Ticket<A>>,
    messages: Vec<NewMessage>,
    tickets: Vec<Ticket<A>>,
    resends: &Resends,
) -> (Vec<Held<Ticket<A>>>, Vec<NewMessage>, Vec<Ticket<A>>) {
    let Some((sends, suspect)) = resends else {
        return (held_first(unwritten, &messages), messages, tickets);
    };
    // The batch's recipients in order of first appearance, and each message's among them.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let recipient_of: Vec<usize> = messages
        .iter()
        .map(|m| {
            let next = index.len();
            *index.entry(m.recipient.as_str()).or_insert(next)
        })
        .collect();
    let mut eligible = vec![true; index.len()];
    for (suspect, recipient) in suspect.iter().zip(&recipient_of) {
        if *suspect {
            eligible[*recipient] = false;
        }
    }
    for (recipient, at) in &index {
        if eligible[*at] && !relay.is_caught_up(recipient) {
            eligible[*at] = false;
        }
    }
    drop(index);
    let wanted = recipient_of.iter().filter(|at| eligible[**at]).count();
    let Some(mut ids) = (wanted > 0).then(|| relay.storage.take_message_ids(wanted)).flatten()
    else {
        return (held_first(unwritten, &messages), messages, tickets);
    };
    // Numbered in the batch's order, so each recipient's ids keep the order they were sent in.
    let mut fresh = Vec::new();
    let mut fresh_tickets = Vec::new();
    // Per recipient: (message, its sender's ticket, its send key), in order.
    type Group<A> = Vec<(NewMessage, Ticket<A>, u64)>;
    let mut groups: Vec<Group<A>> = eligible.iter().map(|_| Vec::new()).collect();
    for (((mut message, ticket), send), at) in
        messages.into_iter().zip(tickets).zip(sends.iter().copied()).zip(recipient_of)
    {
        if !eligible[at] {
            fresh.push(message);
            fresh_tickets.push(ticket);
            continue;
        }
        message.id = ids.next();
        groups[at].push((message, ticket, send));
    }
    groups.retain(|group| !group.is_empty());
    let pushes = groups.iter().map(|group| async move {
        let recipient = group.first().map_or("", |(message, ..)| message.recipient.as_str());
        let push = ReceivePush {
            messages: group
                .iter()
                .map(|(message, ..)| as_received(message.id.unwrap_or_default(), message))
                .collect(),
        };
        push_messages(relay, recipient, &push).await
    });
    let pushed = join_all(pushes).await;
    let now = Instant::now();
    let mut new_contacts = Vec::new();
    {
        let mut known = relay.known_contacts.lock().unwrap_or_else(|e| e.into_inner());
        for (group, delivered) in groups.into_iter().zip(pushed) {
            if !delivered {
                // Nobody took it after all (the socket was ended): stored now, numbered already,
                // so still in order.
                for (message, ticket, _) in group {
                    fresh.push(message);
                    fresh_tickets.push(ticket);
                }
                continue;
            }
            relay.metrics.messages_delivered.inc_by(group.len() as u64);
            relay.metrics.queue_depth.inc_by(group.len() as i64);
            if let Some((message, ..)) = group.first() {
                relay.recipients.add_pending(&message.recipient, group.len() as isize);
            }
            for (message, ticket, send) in group {
                relay.metrics.push_seconds.observe(ticket.1.elapsed().as_secs_f64());
                if known.insert(relay.pair_key(&message.sender, &message.recipient)) {
                    new_contacts.push((message.sender.clone(), message.recipient.clone()));
                }
                unwritten.hold(Held { message, ticket, pushed: now, send });
            }
        }
    }
    if !new_contacts.is_empty() {
        record_contacts(relay, new_contacts).await;
    }
    (held_first(unwritten, &fresh), fresh, fresh_tickets)
}

/// Each admitted message's send key, and whether it may be a resend (see
/// [`possible_resends`]); `None` when the write-behind is off here.
type Resends = Option<(Vec<u64>, Vec<bool>)>;

/// For the write-behind: each message's send key (sender and client id) and whether it may be
/// a resend of a message still held, stored recently, or earlier in the same batch; such a
/// message is stored first, so it is answered with its first copy's id and pushed once.
fn possible_resends<A: Adapter>(
    relay: &Relay<A>,
    unwritten: &Unwritten<Ticket<A>>,
    messages: &[NewMessage],
) -> Resends {
    let off = relay.config.write_behind.is_zero()
        || relay.clustered()
        || !relay.storage.takes_message_ids();
    if off || messages.is_empty() {
        return None;
    }
    let sends: Vec<u64> =
        messages.iter().map(|m| relay.send_key(&m.sender, &m.client_id)).collect();
    let mut seen = std::collections::HashSet::with_capacity(sends.len());
    let recent = relay.recent.lock().unwrap_or_else(|e| e.into_inner());
    let suspect = sends
        .iter()
        .map(|send| !seen.insert(*send) || unwritten.holds_send(*send) || recent.holds_send(*send))
        .collect();
    Some((sends, suspect))
}

/// Drops the messages held for `user`, whose id was just registered anew: their senders are
/// told the recipient is gone, as for any message to an id that no longer exists.
fn forget_held<A: Adapter>(relay: &Relay<A>, unwritten: &mut Unwritten<Ticket<A>>, user: &str) {
    let dropped = unwritten.take_recipient(user);
    if dropped.is_empty() {
        return;
    }
    relay.metrics.queue_depth.dec_by(dropped.len() as i64);
    let failure = Failure::new(ErrorCode::UnknownUser, "the recipient's id was registered anew");
    for held in dropped {
        refuse(relay, held.ticket.0, &failure);
    }
}

/// Takes the held messages of the recipients of `fresh`, to be written with it and before it:
/// what is stored for a recipient must be the oldest of their messages, or a socket catching
/// up past the newest stored one would skip the older held ones.
fn held_first<T>(unwritten: &mut Unwritten<T>, fresh: &[NewMessage]) -> Vec<Held<T>> {
    let mut late = Vec::new();
    for message in fresh {
        if unwritten.is_empty() {
            break;
        }
        late.extend(unwritten.take_recipient(&message.recipient));
    }
    late
}

/// After the commit: held messages written because no acknowledgement came in time (pushed
/// already, counted as queued already). Returns their senders' answers, to be given once the
/// batch is on disk.
fn written_late<A: Adapter>(
    relay: &Relay<A>,
    messages: Vec<NewMessage>,
    tickets: Vec<(Ticket<A>, u64)>,
    outcomes: &[StoreOutcome],
) -> Vec<(AckSender<A>, Instant, SendAnswer)> {
    let mut answers = Vec::with_capacity(tickets.len());
    let mut recent = relay.recent.lock().unwrap_or_else(|e| e.into_inner());
    for ((message, ((ack, received), send)), outcome) in
        messages.into_iter().zip(tickets).zip(outcomes)
    {
        let duplicate = matches!(outcome, StoreOutcome::Duplicate(_));
        answers.push((ack, received, SendAnswer { ok: true, id: outcome.id(), duplicate }));
        if duplicate {
            // A resend of a message stored before this node remembers (its first copy is
            // queued and counted): this copy was pushed for nothing, and its recipient drops
            // it by its ratchet key.
            relay.metrics.queue_depth.dec();
            relay.recipients.add_pending(&message.recipient, -1);
            continue;
        }
        relay.metrics.messages_stored.inc();
        let NewMessage { recipient, sender, client_id, .. } = message;
        recent.insert(outcome.id(), RecentMessage { recipient, sender, client_id, send });
    }
    recent.trim(RECENT_LIMIT);
    answers
}

fn refuse<A: Adapter>(relay: &Relay<A>, ack: AckSender<A>, failure: &Failure) {
    relay.metrics.reject(failure.error.as_str());
    // The sender may be gone; then there is nobody to tell.
    let _ = ack.send(failure);
}

/// Looks up recipients the cache does not know, in two queries for the whole batch.
async fn refresh_recipients<A: Adapter>(
    relay: &Relay<A>,
    unwritten: &Unwritten<Ticket<A>>,
    recipients: &[&str],
    now: Instant,
) -> Result<(), crate::storage::StorageError> {
    let unknown: Vec<&str> = recipients
        .iter()
        .copied()
        .filter(|user| relay.recipients.get(user, now).is_none())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let found = relay.storage.recipients(&unknown).await?;
    for (user, (exists, pending)) in unknown.into_iter().zip(found) {
        // The database does not count what the write-behind holds.
        let pending = pending + unwritten.held_for(user);
        relay.recipients.put(user, RecipientInfo { exists, pending, read_at: now });
    }
    Ok(())
}

/// A stored message's sender, waiting for the answer, and when the relay received it.
type Ticket<A> = (AckSender<A>, Instant);

/// Admits what fits: known recipients with room in their queue. The others are refused now.
async fn admit<A: Adapter>(
    relay: &Arc<Relay<A>>,
    unwritten: &Unwritten<Ticket<A>>,
    jobs: Vec<(NewMessage, AckSender<A>, Instant)>,
) -> (Vec<NewMessage>, Vec<Ticket<A>>) {
    if jobs.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let now = Instant::now();
    let limits = relay.limits();
    // Senders too: an id the operator released (`sotto admin release-user`, which works on the
    // database while the relay runs) must stop sending from a connection still logged in
    // under it, at the latest once its cached entry expires.
    let mut users: Vec<&str> =
        jobs.iter().flat_map(|(m, ..)| [m.recipient.as_str(), m.sender.as_str()]).collect();
    users.sort_unstable();
    users.dedup();
    if let Err(error) = refresh_recipients(relay, unwritten, &users, now).await {
        relay.metrics.storage_errors.inc();
        tracing::warn!(%error, "looking up recipients failed");
        let failure = Failure::new(ErrorCode::StorageUnavailable, "storage unavailable; retry");
        for (_, ack, _) in jobs {
            refuse(relay, ack, &failure);
        }
        return (Vec::new(), Vec::new());
    }

    // Admit what fits: known recipients with room in their queue.
    let mut admitted = Vec::with_capacity(jobs.len());
    let mut tickets = Vec::with_capacity(jobs.len());
    let mut extra: HashMap<&str, usize> = HashMap::new();
    let recipient_names: Vec<String> = jobs.iter().map(|(m, ..)| m.recipient.clone()).collect();
    for ((message, ack, at), recipient) in jobs.into_iter().zip(&recipient_names) {
        if !relay.recipients.get(&message.sender, now).is_some_and(|info| info.exists) {
            refuse(relay, ack, &Failure::new(ErrorCode::UnknownUser, "this user no longer exists"));
            continue;
        }
        let info = relay.recipients.get(recipient, now);
        match info {
            Some(info) if info.exists => {
                let queued = info.pending + extra.get(recipient.as_str()).copied().unwrap_or(0);
                if queued >= limits.max_queue_per_recipient {
                    refuse(
                        relay,
                        ack,
                        &Failure::new(ErrorCode::QueueFull, "the recipient's queue is full"),
                    );
                    continue;
                }
                *extra.entry(recipient.as_str()).or_default() += 1;
                admitted.push(message);
                tickets.push((ack, at));
            }
            _ => refuse(relay, ack, &Failure::new(ErrorCode::UnknownUser, "no such user")),
        }
    }
    (admitted, tickets)
}

/// A stored message on its way to its recipient: its id, the message, when the relay
/// received it.
type Stored<'a> = (i64, &'a NewMessage, Instant);

/// After the commit: push to the recipients, grouped per recipient and in order, and return
/// the senders' answers, to be given once the batch is on disk.
async fn stored<A: Adapter>(
    relay: &Arc<Relay<A>>,
    messages: Vec<NewMessage>,
    tickets: Vec<Ticket<A>>,
    outcomes: &[StoreOutcome],
) -> Vec<(AckSender<A>, Instant, SendAnswer)> {
    let mut per_recipient: Vec<(&str, Vec<Stored<'_>>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut new_contacts: Vec<(String, String)> = Vec::new();
    let mut answers = Vec::with_capacity(tickets.len());
    for ((message, outcome), (ack, at)) in messages.iter().zip(outcomes).zip(tickets) {
        let duplicate = matches!(outcome, StoreOutcome::Duplicate(_));
        answers.push((ack, at, SendAnswer { ok: true, id: outcome.id(), duplicate }));
        if duplicate {
            continue;
        }
        relay.metrics.messages_stored.inc();
        relay.metrics.queue_depth.inc();
        relay.recipients.add_pending(&message.recipient, 1);
        let entry = (outcome.id(), message, at);
        match index.get(message.recipient.as_str()) {
            Some(&position) => per_recipient[position].1.push(entry),
            None => {
                index.insert(&message.recipient, per_recipient.len());
                per_recipient.push((&message.recipient, vec![entry]));
            }
        }
        let key = relay.pair_key(&message.sender, &message.recipient);
        let fresh = relay.known_contacts.lock().map(|mut known| known.insert(key)).unwrap_or(false);
        if fresh {
            new_contacts.push((message.sender.clone(), message.recipient.clone()));
        }
    }
    let pushes = per_recipient.iter().map(|(recipient, messages)| async move {
        let push = ReceivePush {
            messages: messages.iter().map(|(id, message, _)| as_received(*id, message)).collect(),
        };
        push_messages(relay, recipient, &push).await
    });
    // All at once: clustered, each push is a publish that waits for Redis's reply (see
    // `push_to`). Each recipient has one push per batch and batches go one after another,
    // so a recipient's messages keep their order.
    let pushed = join_all(pushes).await;
    for ((_, messages), delivered) in per_recipient.iter().zip(pushed) {
        if delivered {
            relay.metrics.messages_delivered.inc_by(messages.len() as u64);
            for (.., received) in messages {
                relay.metrics.push_seconds.observe(received.elapsed().as_secs_f64());
            }
        }
    }
    if !new_contacts.is_empty() {
        record_contacts(relay, new_contacts).await;
    }
    drop(per_recipient);
    drop(index);
    let mut recent = relay.recent.lock().unwrap_or_else(|e| e.into_inner());
    for (message, outcome) in messages.into_iter().zip(outcomes) {
        if let StoreOutcome::Stored(id) = outcome {
            let send = relay.send_key(&message.sender, &message.client_id);
            let NewMessage { recipient, sender, client_id, .. } = message;
            recent.insert(*id, RecentMessage { recipient, sender, client_id, send });
        }
    }
    recent.trim(RECENT_LIMIT);
    answers
}

/// Saves new (sender, recipient) pairs and tells each recipient that the sender, who has just
/// written to them and so shares their presence from now on, is online. The sender learns
/// nothing about the recipient: that is the recipient's to share, by writing back.
async fn record_contacts<A: Adapter>(relay: &Relay<A>, pairs: Vec<(String, String)>) {
    // Only pairs new to the database are announced: the cache forgets pairs that are recorded
    // already (each registration, each housekeeping round, another node's writes).
    let recorded = match relay.storage.add_contacts(&pairs).await {
        Ok(recorded) => recorded,
        Err(error) => {
            relay.metrics.storage_errors.inc();
            tracing::warn!(%error, "recording contacts failed");
            let mut known = relay.known_contacts.lock().unwrap_or_else(|e| e.into_inner());
            for (sender, recipient) in &pairs {
                known.remove(&relay.pair_key(sender, recipient));
            }
            return;
        }
    };
    let announcements =
        recorded.iter().map(|(sender, recipient)| (recipient.as_str(), sender.as_str()));
    push_presence(relay, events::USER_JOINED, announcements).await;
}

/// Tells the first user of each pair that the second is online or offline (`event`), all at
/// once: clustered, each push is a publish that waits for Redis. On one node only users online
/// here are told; clustered, a user may be online on another node, and the room push finds out.
pub(crate) async fn push_presence<'a, A: Adapter>(
    relay: &Relay<A>,
    event: &'static str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) {
    let pushes = pairs.filter(|(to, _)| relay.clustered() || relay.is_online(to)).map(
        |(to, about)| async move {
            push_notice(relay, to, event, &PresencePush { user_id: about }).await
        },
    );
    join_all(pushes).await;
}

/// Marks the acknowledgements the database said nobody is to be told of
/// ([`Committed::withheld`]) as it marks an earlier holder's messages, which
/// [`delivered`] tells nobody of.
fn withhold_receipts(known: &mut [Acknowledged], withheld: &[i64]) {
    if withheld.is_empty() {
        return;
    }
    let mark = earlier_holder_mark(0);
    for done in known.iter_mut().filter(|done| withheld.contains(&done.id)) {
        done.client_id.insert_str(0, &mark);
    }
}

/// After the commit: count the acknowledgements and tell the senders, but not of messages an
/// earlier holder of the sender's id sent (`crate::storage::earlier_holder_mark`).
async fn delivered<A: Adapter>(relay: &Relay<A>, acknowledged: &[Acknowledged]) {
    if acknowledged.is_empty() {
        return;
    }
    relay.metrics.messages_acknowledged.inc_by(acknowledged.len() as u64);
    relay.metrics.queue_depth.dec_by(acknowledged.len() as i64);
    // Receipts keep the acknowledgements' order within each sender's list.
    let mut per_sender: HashMap<&str, Vec<Receipt<'_>>> = HashMap::new();
    for done in acknowledged {
        relay.recipients.add_pending(&done.recipient, -1);
        if sent_by_earlier_holder(&done.client_id) {
            continue;
        }
        let receipt = Receipt { id: done.id, client_id: &done.client_id, to: &done.recipient };
        per_sender.entry(&done.sender).or_default().push(receipt);
    }
    // All at once, as `stored` pushes; one push per sender per batch keeps receipts in order.
    let pushes = per_sender.into_iter().map(|(sender, receipts)| async move {
        push_notice(relay, sender, events::MESSAGE_DELIVERED, &DeliveredPush { receipts }).await
    });
    join_all(pushes).await;
}

/// Marks a socket caught up and pushes what was stored for it since its catch-up read the
/// queue, then the messages held unwritten for its user (all newer than anything stored for
/// them, see `crate::unwritten`).
async fn attach<A: Adapter>(
    relay: &Arc<Relay<A>>,
    unwritten: &Unwritten<Ticket<A>>,
    socket: SocketRef<A>,
    user: &str,
    after: i64,
) {
    if !relay.add_caught_up(user, &socket) {
        return;
    }
    let mut after = after;
    loop {
        match relay.storage.pending_messages(user, after, PAGE).await {
            Ok(messages) if messages.is_empty() => break,
            Ok(messages) => {
                after = messages.last().map_or(after, |m| m.id);
                let full_page = messages.len() == PAGE;
                if let Err(error) = send_page(relay, &socket, &messages) {
                    tracing::debug!(%error, "socket cannot take its backlog; disconnecting it");
                    end_socket(relay, user, socket);
                    return;
                }
                if !full_page {
                    break;
                }
            }
            Err(error) => {
                // Without the catch-up the socket could miss messages; make it reconnect.
                relay.metrics.storage_errors.inc();
                tracing::warn!(%error, "catching a socket up failed; disconnecting it");
                end_socket(relay, user, socket);
                return;
            }
        }
    }
    let held: Vec<&Held<Ticket<A>>> = unwritten.for_recipient(user, after).collect();
    for page in held.chunks(PAGE) {
        let push = ReceivePush {
            messages: page
                .iter()
                .map(|held| as_received(held.message.id.unwrap_or_default(), &held.message))
                .collect(),
        };
        if let Err(error) = socket.emit(events::MESSAGE_RECEIVE, &push) {
            tracing::debug!(%error, "socket cannot take its backlog; disconnecting it");
            end_socket(relay, user, socket);
            return;
        }
        relay.metrics.messages_delivered.inc_by(page.len() as u64);
    }
}

/// A message not yet read back from the queue, as pushed under `id`.
fn as_received(id: i64, message: &NewMessage) -> ReceivedMessage<'_> {
    ReceivedMessage {
        id,
        from: &message.sender,
        received_at: message.created_at,
        envelope: &message.envelope,
    }
}

/// Pushes one page of queued messages to a socket.
pub(crate) fn send_page<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    messages: &[QueuedMessage],
) -> Result<(), socketioxide::SendError> {
    let raw: Vec<Option<Box<RawValue>>> =
        messages.iter().map(|m| RawValue::from_string(m.envelope.clone()).ok()).collect();
    let push = ReceivePush {
        messages: messages
            .iter()
            .zip(&raw)
            .filter_map(|(m, envelope)| {
                Some(ReceivedMessage {
                    id: m.id,
                    from: &m.sender,
                    received_at: m.created_at,
                    envelope: envelope.as_deref()?,
                })
            })
            .collect(),
    };
    socket.emit(events::MESSAGE_RECEIVE, &push)?;
    relay.metrics.messages_delivered.inc_by(push.messages.len() as u64);
    Ok(())
}

/// Bytes a pushed message is charged with besides its envelope (its id, sender and time).
const PUSH_OVERHEAD: usize = 64;

/// Pushes messages to the sockets of `user` that have caught up with their queue, so live
/// messages never overtake the backlog. See [`push_to`].
///
/// Each socket is charged with what it is pushed until it acknowledges it; one that holds
/// more than `max_unacknowledged_push_bytes` is ended instead (it stopped reading or saving),
/// so what the relay keeps for it stays bounded, and it catches up, paced, when it reconnects.
async fn push_messages<A: Adapter>(relay: &Relay<A>, user: &str, push: &ReceivePush<'_>) -> bool {
    let sizes = push.messages.iter().map(|m| (m.id, m.envelope.get().len(), m.from.len()));
    let sockets = charge_push(relay, user, sizes);
    push_to_sockets(relay, user, sockets, Audience::Messages, events::MESSAGE_RECEIVE, push).await
}

/// Charges the caught-up sockets of `user` with a push of messages (id, envelope bytes, sender
/// bytes), ends those that would then hold more than `max_unacknowledged_push_bytes`
/// unacknowledged, and returns the others, to push to. A message already charged to a socket
/// (a re-push) is not charged twice.
fn charge_push<A: Adapter>(
    relay: &Relay<A>,
    user: &str,
    messages: impl Iterator<Item = (i64, usize, usize)>,
) -> SmallVec<[SocketRef<A>; 2]> {
    let charged: SmallVec<[(i64, usize); 8]> =
        messages.map(|(id, envelope, sender)| (id, envelope + sender + PUSH_OVERHEAD)).collect();
    let allowance = relay.limits().max_unacknowledged_push_bytes;
    let targets = relay.local.take_push(user, &charged, allowance);
    for socket in targets.too_slow {
        relay.metrics.slow_connections_ended.inc();
        tracing::debug!(sid = %socket.id, "too much pushed unacknowledged; disconnecting the socket");
        end_socket(relay, user, socket);
    }
    targets.take
}

/// Pushes a notice (a receipt, presence, a prekey warning) to every logged-in socket of `user`.
/// See [`push_to`].
pub(crate) async fn push_notice<A: Adapter, T: serde::Serialize + ?Sized>(
    relay: &Relay<A>,
    user: &str,
    event: &'static str,
    payload: &T,
) -> bool {
    push_to(relay, user, Audience::Notices, event, payload).await
}

/// Pushes an event to the sockets of `user` that `audience` reaches.
///
/// To this node's sockets first (see [`crate::state::LocalSockets`]), each emitted to on its
/// own: a socket that cannot take it (its buffer is full) is taken out of delivery and
/// disconnected, so it catches up from the queue when it reconnects and delivery stays
/// gap-free. Clustered, then to the user's room on the other nodes through the Redis adapter
/// (this node's sockets are in this node's room, which the broadcast excepts): a publish that
/// completes when Redis answers, so callers with several pushes start them together and the
/// Redis client pipelines them. If Redis is unreachable, the other nodes' sockets catch up
/// from the queue. Returns whether the push went out: a local socket took it, or Redis did.
///
/// Local sockets are not reached through the adapter because its error on a full socket does
/// not say which one, so the relay could not end just that one. A socket on another node that
/// cannot take a push from here is only logged by socketioxide there; it gets the message from
/// that node's re-push or its next catch-up.
async fn push_to<A: Adapter, T: serde::Serialize + ?Sized>(
    relay: &Relay<A>,
    user: &str,
    audience: Audience,
    event: &'static str,
    payload: &T,
) -> bool {
    let sockets = relay.local.sockets(user, audience);
    push_to_sockets(relay, user, sockets, audience, event, payload).await
}

/// [`push_to`] with this node's sockets already chosen.
async fn push_to_sockets<A: Adapter, T: serde::Serialize + ?Sized>(
    relay: &Relay<A>,
    user: &str,
    sockets: SmallVec<[SocketRef<A>; 2]>,
    audience: Audience,
    event: &'static str,
    payload: &T,
) -> bool {
    let mut delivered = false;
    for socket in sockets {
        match socket.emit(event, payload) {
            Ok(()) => delivered = true,
            Err(error) => {
                tracing::debug!(%error, event, "push failed; disconnecting the socket");
                end_socket(relay, user, socket);
            }
        }
    }
    if let (true, true, Some(io)) = (relay.clustered(), relay.adapter_usable(), relay.io()) {
        let room = match audience {
            Audience::Notices => notice_room(user),
            Audience::Messages => user_room(user),
        };
        match io.to(room).except(relay.node_room.clone()).emit(event, payload).await {
            // No socket of this node is in the broadcast, so no socket error can come back.
            Ok(()) | Err(socketioxide::BroadcastError::Socket(_)) => return true,
            Err(error) => {
                relay.metrics.adapter_errors.inc();
                relay.adapter_failed();
                tracing::warn!(%error, event, "adapter push failed; the other nodes' sockets catch up from the queue");
            }
        }
    }
    delivered
}

/// How often a socket that could not be disconnected at once is tried again.
const END_RETRY_EVERY: Duration = Duration::from_millis(100);
/// How long that goes on at most. By then the socket has taken the disconnect or its heartbeat
/// has closed it; if neither, it stays out of delivery and receives nothing until it
/// reconnects, which is a stall, never a gap.
const END_RETRY_FOR: Duration = Duration::from_secs(120);

/// Ends a socket of `user` that the relay can no longer deliver to in order (a push it could
/// not take, a failed read of its backlog, an id taken over by a new registration): first out
/// of every delivery, so that no later push reaches it after the one it missed, then
/// disconnected, so that its client reconnects and catches up from the queue.
///
/// socketioxide's disconnect first queues a packet on the socket's outgoing channel, the one
/// that is full when a push failed, and gives up (the socket staying open) if that fails: so it
/// is retried in the background until it goes through or the socket has closed.
pub(crate) fn end_socket<A: Adapter>(relay: &Relay<A>, user: &str, socket: SocketRef<A>) {
    relay.local.remove(user, socket.id);
    if relay.clustered() {
        socket.leave_all();
    }
    if socket.clone().disconnect().is_ok() {
        return;
    }
    tracing::debug!(sid = %socket.id, "socket full; disconnecting it once it drains");
    tokio::spawn(async move {
        let deadline = Instant::now() + END_RETRY_FOR;
        while socket.connected() && Instant::now() < deadline {
            tokio::time::sleep(END_RETRY_EVERY).await;
            if socket.clone().disconnect().is_ok() {
                return;
            }
        }
    });
}

/// How often a clustered node re-pushes recent undelivered messages.
pub(crate) const REDELIVERY_EVERY: Duration = Duration::from_secs(3);
/// Messages younger than this are left alone (their live push is probably still on its way).
const REDELIVERY_GRACE: Duration = Duration::from_secs(3);
/// How far back the re-push looks; older backlogs wait for the recipient's next login.
const REDELIVERY_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Clustered nodes only: the Redis adapter delivers pushes at most once, so every few seconds
/// each node re-pushes the recent messages still unacknowledged by recipients connected to it.
/// A recipient that already has one drops the repeat by its id. This is what keeps live
/// delivery going while Redis is down or restarting.
pub(crate) async fn run_redelivery<A: Adapter>(relay: Arc<Relay<A>>) {
    let mut tick = tokio::time::interval(REDELIVERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (when, highest id then): the window starts at the highest id seen WINDOW ago.
    let mut marks: std::collections::VecDeque<(Instant, i64)> = std::collections::VecDeque::new();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if let Ok(last) = relay.storage.last_message_id().await {
            marks.push_back((now, last));
        }
        while marks.len() > 1 && marks[1].0 + REDELIVERY_WINDOW <= now {
            marks.pop_front();
        }
        // From the oldest mark: at start-up the highest id then (older messages reach this
        // node's sockets by their catch-up), later the highest id a window ago.
        let after_id = marks.front().map_or(0, |(_, id)| *id);
        // Only the recipients connected here: a backlog queued for anyone else, however large,
        // costs nothing.
        let online: Vec<Arc<str>> = relay.online_users();
        if online.is_empty() {
            continue;
        }
        let online: Vec<&str> = online.iter().map(|user| &**user).collect();
        let grace = i64::try_from(REDELIVERY_GRACE.as_millis()).unwrap_or(0);
        let created_before = now_ms() - grace;
        let pending =
            match relay.storage.pending_since(&online, after_id, created_before, 10_000).await {
                Ok(pending) => pending,
                Err(error) => {
                    relay.metrics.storage_errors.inc();
                    tracing::warn!(%error, "reading recent undelivered messages failed");
                    continue;
                }
            };
        let mut per_recipient: Vec<(String, Vec<QueuedMessage>)> = Vec::new();
        for (recipient, message) in pending {
            if !relay.is_online(&recipient) {
                continue;
            }
            match per_recipient.iter_mut().find(|(r, _)| *r == recipient) {
                Some((_, list)) => list.push(message),
                None => per_recipient.push((recipient, vec![message])),
            }
        }
        for (recipient, messages) in per_recipient {
            // Charged like live pushes, so a connection that keeps them all unacknowledged is
            // ended here too.
            let sizes = messages.iter().map(|m| (m.id, m.envelope.len(), m.sender.len()));
            for socket in charge_push(&relay, &recipient, sizes) {
                for page in messages.chunks(PAGE) {
                    if send_page(&relay, &socket, page).is_err() {
                        end_socket(&relay, &recipient, socket.clone());
                        break;
                    }
                }
            }
            relay.metrics.messages_redelivered.inc_by(messages.len() as u64);
        }
    }
}

/// Periodic housekeeping: expiring undelivered messages, refreshing the
/// queue-depth gauge, forgetting idle rate-limit buckets and the contact pairs known to be
/// recorded.
pub(crate) async fn run_housekeeping<A: Adapter>(relay: Arc<Relay<A>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ttl = i64::try_from(relay.limits().message_ttl.as_millis()).unwrap_or(i64::MAX);
        match relay.storage.purge(now_ms().saturating_sub(ttl)).await {
            Ok(expired) => {
                relay.metrics.messages_expired.inc_by(expired);
            }
            Err(error) => {
                relay.metrics.storage_errors.inc();
                tracing::warn!(%error, "purging the queue failed");
            }
        }
        // Held messages count as queued too. Read first: one written in between is counted
        // twice until the next round rather than not at all.
        let held = relay.held_unwritten.load(Ordering::Relaxed) as u64;
        if let Ok(stored) = relay.storage.total_pending().await {
            let depth = stored.saturating_add(held);
            relay.metrics.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        let now = Instant::now();
        relay.pair_limiter.sweep(now);
        relay.fetch_limiter.sweep(now);
        relay.registration_limiter.sweep(now);
        relay.recipients.sweep(now);
        // Another node may have seen an id released and registered again, and only that node
        // cleared its cache then; starting afresh each round bounds how long this node keeps
        // such a pair unrecorded (and the cache's size), at one idempotent insert per pair
        // that writes again.
        relay.known_contacts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
