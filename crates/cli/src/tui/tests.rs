//! Rendering tests with ratatui's `TestBackend`.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use sotto_client::store::{ConversationSummary, StoredMessage};

use super::app::{App, Connection, Overlay, PeerInfo};
use super::{backoff, ui};

fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| ui::draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..height {
        for x in 0..width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn message(id: i64, outgoing: bool, body: &str, status: &str) -> StoredMessage {
    StoredMessage {
        id,
        peer: "bob".into(),
        outgoing,
        body: Some(body.into()),
        counter: Some(id as u64),
        sent_at: 1_767_225_600_000,
        received_at: Some(1_767_225_600_000),
        server_id: Some(id),
        status: status.into(),
    }
}

fn chatting() -> App {
    let mut app = App::new("alice");
    app.connection = Connection::Online;
    app.conversations = vec![
        ConversationSummary { peer: "bob".into(), unread: 0, last: None, updated_at: 2 },
        ConversationSummary { peer: "carol".into(), unread: 3, last: None, updated_at: 1 },
    ];
    app.selected = Some("bob".into());
    app.messages = vec![
        message(1, true, "hi bob", "delivered"),
        message(2, false, "hello alice", "received"),
        message(3, true, "still there?", "stored"),
        message(4, true, "typing fast", "sending"),
        message(5, true, "withheld", "unconfirmed"),
    ];
    app.peer = PeerInfo { online: true, verified: true, key_changed: false, missing: 0 };
    app.input = "draft".into();
    app
}

#[test]
fn the_chat_shows_conversations_unread_counts_statuses_and_connection() {
    let text = screen(&chatting(), 100, 20);
    for expected in [
        "Sotto",
        "alice",
        "● online",
        "Conversations",
        "> bob",
        "carol (3)",
        "hi bob",
        "✓✓ delivered",
        "hello alice",
        "✓ stored",
        "… sending",
        "⚠ relay said delivered; not received",
        "✔ verified",
        "> draft",
        "Message to bob",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn reconnecting_and_missing_messages_are_visible() {
    let mut app = chatting();
    app.connection = Connection::Reconnecting { attempt: 2, in_seconds: 4, reason: "x".into() };
    app.peer.missing = 2;
    let text = screen(&app, 100, 20);
    assert!(text.contains("reconnecting in 4s (attempt 2)"), "{text}");
    assert!(text.contains("2 messages from bob missing"), "{text}");
}

/// A long conversation with messages that wrap over many rows: the newest message, its status
/// and the missing-messages warning stay in view; receipts (no text) take no row.
#[test]
fn the_newest_wrapped_messages_and_the_missing_warning_stay_in_view() {
    let mut app = chatting();
    app.peer.missing = 1;
    let mut messages: Vec<StoredMessage> =
        (1..=40).map(|id| message(id, false, &"long words ".repeat(30), "received")).collect();
    let mut receipt = message(41, false, "", "received");
    receipt.body = None;
    messages.push(receipt);
    messages.push(message(42, true, "the newest one", "unconfirmed"));
    app.messages = messages;
    let text = screen(&app, 80, 20);
    assert!(text.contains("1 message from bob missing"), "{text}");
    assert!(text.contains("the newest one"), "{text}");
    assert!(text.contains("⚠ relay said delivered"), "its status too: {text}");
    let rows: Vec<&str> = text.lines().collect();
    let newest = rows.iter().position(|row| row.contains("the newest one")).unwrap();
    assert!(rows[newest - 1].contains("long words"), "no empty row for the receipt: {text}");
}

#[test]
fn the_key_change_warning_and_safety_number_render() {
    let mut app = chatting();
    app.peer.key_changed = true;
    app.overlay = Some(Overlay::KeyChanged { peer: "bob".into() });
    let text = screen(&app, 100, 24);
    assert!(text.contains("bob's security key has changed"), "{text}");
    assert!(text.contains("s: show the new safety number"), "{text}");
    assert!(text.contains("⚠ key changed"), "{text}");

    app.overlay = Some(Overlay::SafetyNumber {
        peer: "bob".into(),
        groups: (0..12).map(|i| format!("{i:05}")).collect(),
        verified: false,
        changed: false,
    });
    let text = screen(&app, 100, 24);
    assert!(text.contains("00000  00001  00002  00003"), "{text}");
    assert!(text.contains("00008  00009  00010  00011"), "{text}");
    assert!(text.contains("v: they match"), "{text}");
}

#[test]
fn help_and_the_empty_state_render() {
    let mut app = App::new("alice");
    let text = screen(&app, 90, 20);
    assert!(text.contains("Ctrl-N starts one by user id"), "{text}");
    app.overlay = Some(Overlay::Help);
    let text = screen(&app, 90, 20);
    assert!(text.contains("Ctrl-S       safety number"), "{text}");
}

#[test]
fn undecryptable_messages_are_shown_as_such() {
    let mut app = chatting();
    let mut bad = message(5, false, "", "undecryptable");
    bad.body = None;
    app.messages.push(bad);
    let text = screen(&app, 100, 20);
    assert!(text.contains("could not be decrypted"), "{text}");
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    for attempt in 1..20 {
        let wait = backoff(attempt);
        assert!(wait.as_secs_f64() <= 30.0 * 1.3);
        assert!(wait.as_secs_f64() >= 0.7);
    }
    assert!(backoff(5) > backoff(1));
}
