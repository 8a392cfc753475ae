//! `sotto chat`: the terminal UI.
//!
//! Two tasks: the engine owns the relay connection (log in, reconnect with backoff and jitter,
//! drain the outbox, receive) and carries out what the user asks; the screen loop reads keys,
//! asks the engine, and redraws from the local store whenever the engine reports a change.

mod app;
mod ui;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures_util::StreamExt;
use rand::RngExt;
use sotto_client::relay::RelayError;
use sotto_client::{Client, ClientError, Event, Trusted};
use sotto_protocol::UserId;
use tokio::sync::mpsc;

pub use app::{Action, App, Connection, Overlay, PeerInfo};

use crate::commands::{Place, explain};

/// What the engine tells the screen.
#[derive(Debug)]
enum Update {
    /// The connection changed.
    Connection(Connection),
    /// Data changed: reload.
    Changed,
    /// Events from the relay.
    Events(Vec<Event>),
    /// A safety number to show.
    SafetyNumber { peer: String, groups: Vec<String>, verified: bool, changed: bool },
    /// Something to tell the user.
    Notice(String),
}

/// How often a connected chat retries messages still waiting in the outbox.
const OUTBOX_RETRY_EVERY: Duration = Duration::from_secs(30);
/// How often a connected chat checks whether its signed prekey is due for replacement.
const ROTATION_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Backoff before reconnect attempt `attempt`: exponential from 1 s to 30 s, with ±30 % jitter
/// so many clients do not come back at once.
pub fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(5).saturating_sub(1);
    let base = Duration::from_secs(base.min(30));
    let jitter = rand::rng().random_range(0.7..1.3);
    base.mul_f64(jitter)
}

async fn engine(
    client: Arc<Client>,
    server: String,
    mut actions: mpsc::UnboundedReceiver<Action>,
    updates: mpsc::UnboundedSender<Update>,
) {
    let mut attempt = 0u32;
    loop {
        match client.connect(&server).await {
            Ok((relay, mut pushes, _)) => {
                attempt = 0;
                let _ = updates.send(Update::Connection(Connection::Online));
                let mut events = client.flush_outbox(&relay).await.unwrap_or_default();
                events.extend(client.refresh_delivery(&relay).await.unwrap_or_default());
                let _ = updates.send(Update::Events(events));
                // What a busy relay or a timeout left in the outbox is tried again now and then
                // while connected, not only when the user sends something else.
                let mut retry = tokio::time::interval_at(
                    tokio::time::Instant::now() + OUTBOX_RETRY_EVERY,
                    OUTBOX_RETRY_EVERY,
                );
                // A chat left connected for days still replaces its signed prekey weekly (the
                // check on connecting is not enough then).
                let mut rotation = tokio::time::interval_at(
                    tokio::time::Instant::now() + ROTATION_CHECK_EVERY,
                    ROTATION_CHECK_EVERY,
                );
                loop {
                    tokio::select! {
                        _ = rotation.tick() => {
                            // The count of uploaded one-time prekeys is not known here: only
                            // the rotation is checked (top-ups follow the relay's prekeys:low).
                            if let Err(error) = client.maintain_prekeys(&relay, usize::MAX).await {
                                let _ = updates.send(Update::Notice(explain(&error, &server)));
                            }
                        }
                        _ = retry.tick() => {
                            if let Ok(mut events) = client.flush_outbox(&relay).await {
                                // A message held by an unaccepted key change was reported when
                                // it was held: not again every half minute.
                                events.retain(|event| !matches!(event, Event::KeyChanged { .. }));
                                let _ = updates.send(Update::Events(events));
                            }
                        }
                        push = pushes.recv() => {
                            let Some(push) = push else { break };
                            match client.handle(&relay, push).await {
                                Ok(events) => { let _ = updates.send(Update::Events(events)); }
                                Err(error) => { let _ = updates.send(Update::Notice(explain(&error, &server))); }
                            }
                        }
                        action = actions.recv() => {
                            let Some(action) = action else { return };
                            perform(&client, Some(&relay), &server, action, &updates).await;
                        }
                    }
                }
                relay.close();
            }
            Err(ClientError::Relay(RelayError::Refused(refusal)))
                if refusal.error == "authentication_failed" =>
            {
                let _ = updates.send(Update::Connection(Connection::Offline(
                    "the relay no longer accepts this identity".into(),
                )));
                // Keep serving local actions (history, safety numbers) without a connection.
                while let Some(action) = actions.recv().await {
                    perform(&client, None, &server, action, &updates).await;
                }
                return;
            }
            Err(error) => {
                attempt += 1;
                let wait = backoff(attempt);
                let reason = explain(&error, &server);
                let _ = updates.send(Update::Connection(Connection::Reconnecting {
                    attempt,
                    in_seconds: wait.as_secs().max(1),
                    reason,
                }));
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        action = actions.recv() => {
                            let Some(action) = action else { return };
                            perform(&client, None, &server, action, &updates).await;
                        }
                    }
                }
            }
        }
        let _ = updates.send(Update::Connection(Connection::Reconnecting {
            attempt: attempt + 1,
            in_seconds: 1,
            reason: "connection lost".into(),
        }));
    }
}

async fn perform(
    client: &Client,
    relay: Option<&sotto_client::relay::RelayClient>,
    server: &str,
    action: Action,
    updates: &mpsc::UnboundedSender<Update>,
) {
    let result: Result<(), ClientError> = async {
        match action {
            Action::Send { peer, text } => {
                let peer = parse(&peer)?;
                client.compose(&peer, &text).await?;
                let _ = updates.send(Update::Changed);
                if let Some(relay) = relay {
                    let events = client.flush_outbox(relay).await?;
                    let _ = updates.send(Update::Events(events));
                }
            }
            Action::Open(peer) => {
                let peer = parse(&peer)?;
                if peer == *client.user() {
                    return Err(ClientError::ToSelf);
                }
                client.store().touch_conversation(peer.as_str(), now_ms()).await?;
                client.store().mark_read(peer.as_str()).await?;
                if let Some(relay) = relay {
                    client.learn_identity(relay, &peer).await?;
                }
                let _ = updates.send(Update::Changed);
            }
            Action::ShowSafetyNumber(peer) => {
                let peer = parse(&peer)?;
                if client.store().contact(peer.as_str()).await?.is_none()
                    && let Some(relay) = relay
                {
                    client.learn_identity(relay, &peer).await?;
                }
                let (number, changed) = client.safety_number(&peer).await?;
                let verified =
                    client.store().contact(peer.as_str()).await?.is_some_and(|c| c.verified);
                let _ = updates.send(Update::SafetyNumber {
                    peer: peer.to_string(),
                    groups: number.groups().map(str::to_owned).collect(),
                    verified,
                    changed,
                });
            }
            Action::Verify(peer) => {
                let peer = parse(&peer)?;
                client.verify(&peer).await?;
                let _ = updates.send(Update::Notice(format!("{peer} is verified")));
                let _ = updates.send(Update::Changed);
            }
            Action::Trust { peer, number } => {
                let peer = parse(&peer)?;
                let notice = match client.trust(&peer, Some(&number)).await? {
                    Trusted::Accepted(_) => {
                        format!("accepted {peer}'s new key; mark it verified from its safety number (Ctrl-S)")
                    }
                    Trusted::NothingPending => format!("{peer}'s key has not changed"),
                    Trusted::OtherNumber => format!(
                        "{peer}'s key changed again since that number was shown: nothing accepted; \
                         compare the new number (Ctrl-S)"
                    ),
                };
                let _ = updates.send(Update::Notice(notice));
                if let Some(relay) = relay {
                    let events = client.flush_outbox(relay).await?;
                    let _ = updates.send(Update::Events(events));
                }
                let _ = updates.send(Update::Changed);
            }
            Action::None | Action::Quit => {}
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        let notice = match &error {
            ClientError::KeyChanged(_) => error.to_string(),
            _ => explain(&error, server),
        };
        let _ = updates.send(Update::Notice(notice));
        let _ = updates.send(Update::Changed);
    }
}

fn parse(peer: &str) -> Result<UserId, ClientError> {
    UserId::parse(peer).map_err(|e| ClientError::Protocol(format!("invalid user id {peer:?}: {e}")))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reloads what the screen shows from the store.
async fn reload(client: &Client, app: &mut App, online: &HashSet<String>) -> anyhow::Result<()> {
    app.conversations = client.store().conversations().await?;
    if app.selected.is_none() {
        app.selected = app.conversations.first().map(|c| c.peer.clone());
    }
    if let Some(peer) = app.selected.clone() {
        client.store().mark_read(&peer).await?;
        if let Some(c) = app.conversations.iter_mut().find(|c| c.peer == peer) {
            c.unread = 0;
        }
        app.messages = client.store().history(&peer, 500).await?;
        let contact = client.store().contact(&peer).await?;
        app.peer = PeerInfo {
            online: online.contains(&peer),
            verified: contact.as_ref().is_some_and(|c| c.verified),
            key_changed: contact.as_ref().is_some_and(|c| c.pending.is_some()),
            missing: client.store().counters(&peer).await?.missing(),
        };
    }
    Ok(())
}

/// Runs the chat until the user quits.
pub async fn run(place: &Place) -> anyhow::Result<()> {
    let client = Arc::new(Client::open(&place.home).await.context("open your identity")?);
    let server = place.server.clone().unwrap_or_else(|| client.server().to_owned());
    let (actions, action_rx) = mpsc::unbounded_channel();
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let engine = tokio::spawn(engine(client.clone(), server, action_rx, updates_tx));

    let mut terminal = ratatui::try_init().context("start the terminal UI")?;
    let mut app = App::new(client.user().as_str());
    let mut online: HashSet<String> = HashSet::new();
    let mut keys = EventStream::new();
    let result: anyhow::Result<()> = async {
        reload(&client, &mut app, &online).await?;
        loop {
            terminal.draw(|frame| ui::draw(frame, &app))?;
            tokio::select! {
                key = keys.next() => {
                    let Some(Ok(event)) = key else { break };
                    let TermEvent::Key(key) = event else { continue };
                    if key.kind != KeyEventKind::Press { continue; }
                    match app.on_key(key) {
                        Action::Quit => break,
                        Action::None => {}
                        Action::Open(peer) => {
                            app.selected = Some(peer.clone());
                            let _ = actions.send(Action::Open(peer));
                            reload(&client, &mut app, &online).await?;
                        }
                        action => { let _ = actions.send(action); }
                    }
                }
                update = updates.recv() => {
                    let Some(update) = update else { break };
                    match update {
                        Update::Connection(connection) => {
                            if let Connection::Reconnecting { reason, .. } | Connection::Offline(reason) = &connection {
                                app.notice = Some(reason.clone());
                            }
                            app.connection = connection;
                        }
                        Update::Changed => reload(&client, &mut app, &online).await?,
                        Update::Events(events) => {
                            for event in events {
                                match event {
                                    Event::Presence { peer, online: true } => { online.insert(peer); }
                                    Event::Presence { peer, online: false } => { online.remove(&peer); }
                                    Event::KeyChanged { peer } => {
                                        app.selected.get_or_insert(peer.clone());
                                        if app.selected.as_deref() == Some(peer.as_str()) {
                                            app.overlay = Some(Overlay::KeyChanged { peer });
                                        } else {
                                            app.notice = Some(format!("{peer}'s security key changed"));
                                        }
                                    }
                                    Event::Failed { reason, .. } => app.notice = Some(format!("not sent: {reason}")),
                                    Event::DigestMismatch { peer } => {
                                        app.notice = Some(format!("{peer} received a message in your name that this device did not send"));
                                    }
                                    Event::Unconfirmed { peer, messages } => {
                                        app.notice = Some(format!("{} message(s) the relay called delivered never reached {peer}", messages.len()));
                                    }
                                    _ => {}
                                }
                            }
                            reload(&client, &mut app, &online).await?;
                        }
                        Update::SafetyNumber { peer, groups, verified, changed } => {
                            app.overlay = Some(Overlay::SafetyNumber { peer, groups, verified, changed });
                        }
                        Update::Notice(text) => app.notice = Some(text),
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    ratatui::restore();
    engine.abort();
    client.close().await;
    result
}

#[cfg(test)]
mod tests;
