//! A logging-in socket's catch-up: its queued messages, oldest first, paced by its
//! acknowledgements.
//!
//! Why paced: pushed as fast as the socket's outgoing channel accepts them, a backlog of
//! thousands of messages sat in the relay's memory at once (the channel holds 1,024 pushes of a
//! page each), and tungstenite's outgoing buffer, which is drained but never shrunk, kept the
//! capacity of the largest burst for the rest of the connection's life. Here a socket has at
//! most [`WINDOW_BYTES`] of envelopes pushed and not yet acknowledged (two pushes); the next
//! push waits for the client's `message:ack`. A client acknowledges a push once it has saved
//! it, so the window costs a round trip per push, in which the client saves the other; a client
//! that never acknowledges gets the first window and then waits (what it holds stays queued for
//! its next login). The window is what each connection keeps afterwards, so it is small: on a
//! link with 100 ms round trips it still passes 320 KB (about 600 text messages) a second.
//!
//! Once the backlog is pushed, the socket is handed to the queue writer (`Job::Attach`), which
//! pushes what was stored since the last read and marks the socket caught up for live delivery.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use tokio::sync::Notify;

use crate::delivery::{self, Job};
use crate::metrics::CatchingUp;
use crate::state::{Connection, Relay};
use crate::storage::QueuedMessage;

/// Envelope bytes in one catch-up push at most (a single larger message goes alone).
pub const PUSH_BYTES: usize = 16 * 1024;
/// Envelope bytes pushed and not yet acknowledged at most: two pushes (one larger message
/// goes when nothing else is in flight).
pub const WINDOW_BYTES: usize = 2 * PUSH_BYTES;
/// Messages read from the queue at a time: about one push of text messages. A read waits for
/// room for a push, and more than a push left unsent is read again later rather than held, so
/// a catch-up waiting for acknowledgements holds at most one push read ahead.
const READ: usize = 32;
/// Acknowledged ids waiting for the catch-up to take them, at most.
const RECORDED_ACKS: usize = 10_000;
/// How often a catch-up waiting for acknowledgements checks that its socket is still open.
const OPEN_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The acknowledgements a socket sent while it catches up, passed from its `message:ack`
/// handler to its catch-up task. Kept in the connection's state only while the catch-up runs.
#[derive(Debug, Default)]
pub(crate) struct CatchUpAcks {
    ids: Mutex<Vec<i64>>,
    arrived: Notify,
}

impl CatchUpAcks {
    /// Notes acknowledged ids (any ids: those the catch-up did not push are ignored by it).
    /// At most [`RECORDED_ACKS`] wait to be taken: while the catch-up is busy (a slow read, a
    /// full socket) a client could otherwise pile up ids without end; an honest one has only
    /// the window's in flight, and dropping the oldest can only stall a client that floods.
    pub(crate) fn record(&self, ids: &[i64]) {
        let mut recorded = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        recorded.extend_from_slice(ids);
        if recorded.len() > RECORDED_ACKS {
            let excess = recorded.len() - RECORDED_ACKS;
            recorded.drain(..excess);
        }
        drop(recorded);
        // Stores a permit if the catch-up is not waiting yet, so no acknowledgement is missed.
        self.arrived.notify_one();
    }

    fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The messages pushed and not yet acknowledged, by id, with their envelope sizes.
#[derive(Debug, Default)]
struct InFlight {
    messages: VecDeque<(i64, usize)>,
    bytes: usize,
}

impl InFlight {
    fn pushed(&mut self, push: &[QueuedMessage]) {
        for message in push {
            self.messages.push_back((message.id, message.envelope.len()));
            self.bytes += message.envelope.len();
        }
    }

    fn acknowledged(&mut self, mut ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        let mut freed = 0;
        self.messages.retain(|(id, size)| {
            let keep = ids.binary_search(id).is_err();
            if !keep {
                freed += size;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Whether a push of `bytes` may go now. An empty window takes one push, however large.
    fn has_room_for(&self, bytes: usize) -> bool {
        self.messages.is_empty() || self.bytes + bytes <= WINDOW_BYTES
    }
}

fn bytes_of(push: &[QueuedMessage]) -> usize {
    push.iter().map(|m| m.envelope.len()).sum()
}

/// Splits a page into pushes of at most [`PUSH_BYTES`] of envelopes, each at least one message.
fn pushes(page: &[QueuedMessage]) -> impl Iterator<Item = &[QueuedMessage]> {
    let mut rest = page;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut count = 0;
        for message in rest {
            bytes += message.envelope.len();
            if count > 0 && bytes > PUSH_BYTES {
                break;
            }
            count += 1;
        }
        let (push, after) = rest.split_at(count);
        rest = after;
        Some(push)
    })
}

/// Pushes the socket's backlog, then hands the socket to the writer for the rest and for live
/// delivery. Ends early (the socket closed, or it is disconnected to try again at its next
/// login) when the socket goes or the queue cannot be read.
pub(crate) async fn run<A: Adapter>(
    relay: Arc<Relay<A>>,
    socket: SocketRef<A>,
    user: Arc<str>,
    catching_up: CatchingUp,
) {
    let Some(connection) = socket.extensions.get::<Arc<Connection>>() else {
        return;
    };
    let acks = Arc::new(CatchUpAcks::default());
    connection.lock().catch_up = Some(acks.clone());
    let pushed = push_backlog(&relay, &socket, &user, &acks).await;
    connection.lock().catch_up = None;
    let Some(after) = pushed else {
        return;
    };
    let job = Job::Attach { socket: socket.clone(), user: user.clone(), after, catching_up };
    if relay.writer.send(job).await.is_err() {
        delivery::end_socket(&relay, &user, socket);
    }
}

/// Reads the backlog a little at a time and pushes it within the window; returns the id of the
/// last message pushed (0 for none), or `None` if the catch-up ended early.
async fn push_backlog<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    user: &str,
    acks: &CatchUpAcks,
) -> Option<i64> {
    let mut in_flight = InFlight::default();
    let mut after = 0;
    // What the next read waits for: room for a push, or for the one a read found too large.
    let mut room_needed = PUSH_BYTES;
    loop {
        wait_for_room(socket, acks, &mut in_flight, room_needed).await?;
        room_needed = PUSH_BYTES;
        let page = match relay.storage.pending_messages(user, after, READ).await {
            Ok(page) => page,
            Err(error) => {
                relay.metrics.storage_errors.inc();
                tracing::warn!(%error, "reading the backlog failed; disconnecting to retry later");
                delivery::end_socket(relay, user, socket.clone());
                return None;
            }
        };
        let Some(last) = page.last().map(|m| m.id) else {
            return Some(after);
        };
        let mut sent_to = after;
        let mut unsent = bytes_of(&page);
        for push in pushes(&page) {
            let bytes = bytes_of(push);
            in_flight.acknowledged(acks.take());
            if !in_flight.has_room_for(bytes) {
                if sent_to == after || unsent > PUSH_BYTES {
                    // Read again once there is room rather than hold the rest while waiting (a
                    // page of large messages is over a megabyte).
                    room_needed = bytes;
                    break;
                }
                wait_for_room(socket, acks, &mut in_flight, bytes).await?;
            }
            unsent -= bytes;
            send(relay, socket, user, push).await?;
            in_flight.pushed(push);
            sent_to = push.last().map_or(sent_to, |m| m.id);
        }
        after = sent_to;
        if sent_to == last && page.len() < READ {
            return Some(after);
        }
    }
}

/// Waits until the client's acknowledgements leave room for a push of `bytes`; `None` if the
/// socket closed.
async fn wait_for_room<A: Adapter>(
    socket: &SocketRef<A>,
    acks: &CatchUpAcks,
    in_flight: &mut InFlight,
    bytes: usize,
) -> Option<()> {
    loop {
        in_flight.acknowledged(acks.take());
        if in_flight.has_room_for(bytes) {
            return Some(());
        }
        if tokio::time::timeout(OPEN_CHECK_EVERY, acks.arrived.notified()).await.is_err()
            && !socket.connected()
        {
            return None;
        }
    }
}

/// Sends one push. socketioxide refuses a packet when the socket's outgoing channel is full
/// (live notices share it): waits for the client to drain it rather than dropping the push (up
/// to 10 s, then disconnects so the client starts over at its next login).
async fn send<A: Adapter>(
    relay: &Relay<A>,
    socket: &SocketRef<A>,
    user: &str,
    push: &[QueuedMessage],
) -> Option<()> {
    let mut attempts = 0;
    loop {
        match delivery::send_page(relay, socket, push) {
            Ok(()) => return Some(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) if attempts < 500 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => {
                tracing::debug!(%error, "catch-up stalled; disconnecting to retry later");
                delivery::end_socket(relay, user, socket.clone());
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, size: usize) -> QueuedMessage {
        QueuedMessage { id, sender: "alice".into(), envelope: "x".repeat(size), created_at: 0 }
    }

    fn ids_of(pushes: Vec<&[QueuedMessage]>) -> Vec<Vec<i64>> {
        pushes.into_iter().map(|p| p.iter().map(|m| m.id).collect()).collect()
    }

    #[test]
    fn acknowledgements_waiting_for_a_busy_catch_up_are_bounded() {
        let acks = CatchUpAcks::default();
        let flood: Vec<i64> = (0..1_000).collect();
        for _ in 0..50 {
            acks.record(&flood);
        }
        acks.record(&[7_777_777]);
        let taken = acks.take();
        assert_eq!(taken.len(), RECORDED_ACKS);
        assert_eq!(taken.last(), Some(&7_777_777), "the newest are kept");
        assert!(acks.take().is_empty());
    }

    #[test]
    fn a_page_is_split_by_envelope_bytes_and_a_large_message_goes_alone() {
        let small: Vec<_> = (1..=64).map(|id| message(id, 250)).collect();
        assert_eq!(pushes(&small).count(), 1, "64 messages of 250 bytes fit one push");
        let typical: Vec<_> = (1..=64).map(|id| message(id, 500)).collect();
        assert_eq!(pushes(&typical).map(<[_]>::len).collect::<Vec<_>>(), vec![32, 32]);

        let page =
            vec![message(1, 8_000), message(2, 8_000), message(3, 9_000), message(4, 40_000)];
        assert_eq!(ids_of(pushes(&page).collect()), vec![vec![1, 2], vec![3], vec![4]]);
        assert_eq!(pushes(&[]).count(), 0);
    }

    #[test]
    fn the_window_opens_as_acknowledgements_arrive() {
        let first: Vec<_> = (1..=32).map(|id| message(id, 500)).collect();
        let second: Vec<_> = (33..=64).map(|id| message(id, 500)).collect();
        let third: Vec<_> = (65..=96).map(|id| message(id, 500)).collect();
        let mut in_flight = InFlight::default();
        assert!(in_flight.has_room_for(bytes_of(&first)));
        in_flight.pushed(&first);
        assert!(in_flight.has_room_for(bytes_of(&second)), "two pushes may be in flight");
        in_flight.pushed(&second);
        assert!(!in_flight.has_room_for(bytes_of(&third)));

        // Acknowledging ids never pushed, or half a push, is not enough.
        in_flight.acknowledged(vec![500, 501]);
        in_flight.acknowledged((1..=16).collect());
        assert!(!in_flight.has_room_for(bytes_of(&third)));
        in_flight.acknowledged((17..=32).rev().collect());
        assert!(in_flight.has_room_for(bytes_of(&third)));
        assert_eq!(in_flight.bytes, 32 * 500);
    }

    #[test]
    fn a_message_larger_than_the_window_goes_alone() {
        let mut in_flight = InFlight::default();
        let large = [message(1, 40_000)];
        assert!(in_flight.has_room_for(bytes_of(&large)), "an empty window takes any push");
        in_flight.pushed(&large);
        assert!(!in_flight.has_room_for(300));
        in_flight.acknowledged(vec![1]);
        assert_eq!(in_flight.bytes, 0);
        in_flight.pushed(&[message(2, 16_000), message(3, 16_000)]);
        assert!(!in_flight.has_room_for(1_000), "over the window");
        assert!(in_flight.has_room_for(768));
    }
}
