//! Drawing the chat screen with ratatui.
//!
//! ```text
//! ┌ Sotto · alice ──────────────────────────────── ● online ┐
//! │ Conversations      │ bob  ● online  ✔ verified           │
//! │ > bob              │ 10:02  you  hi bob            ✓✓    │
//! │   carol (2)        │ 10:03  bob  hello!                  │
//! │                    │                                      │
//! ├────────────────────┴──────────────────────────────────────┤
//! │ > message…                                                │
//! └ Enter send · Ctrl-N new · Ctrl-S safety number · ? help ──┘
//! ```

use chrono::{Local, TimeZone};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, Paragraph, Wrap};

use super::app::{App, Connection, Overlay};

/// Local wall-clock time, `HH:MM`.
pub fn clock(unix_ms: i64) -> String {
    Local
        .timestamp_millis_opt(unix_ms)
        .single()
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_default()
}

fn connection_span(connection: &Connection) -> Span<'static> {
    match connection {
        Connection::Connecting => Span::styled("◌ connecting", Style::new().fg(Color::Yellow)),
        Connection::Online => Span::styled("● online", Style::new().fg(Color::Green)),
        Connection::Reconnecting { attempt, in_seconds, .. } => Span::styled(
            format!("◌ reconnecting in {in_seconds}s (attempt {attempt})"),
            Style::new().fg(Color::Yellow),
        ),
        Connection::Offline(_) => Span::styled("○ offline", Style::new().fg(Color::Red)),
    }
}

fn status_mark(status: &str) -> &'static str {
    match status {
        "sending" => "… sending",
        "stored" => "✓ stored",
        "delivered" => "✓✓ delivered",
        "unconfirmed" => "⚠ relay said delivered; not received",
        "failed" => "✗ not sent",
        _ => "",
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [top, body, input, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let title = Line::from(vec![
        Span::styled(" Sotto ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("· {}  ", app.me)),
        connection_span(&app.connection),
    ]);
    frame.render_widget(Paragraph::new(title), top);

    let [list_area, chat_area] =
        Layout::horizontal([Constraint::Percentage(28), Constraint::Percentage(72)]).areas(body);
    draw_conversations(frame, app, list_area);
    draw_messages(frame, app, chat_area);

    let input_block = Block::default().borders(Borders::ALL).title(match &app.selected {
        Some(peer) => format!(" Message to {peer} "),
        None => " Message ".to_owned(),
    });
    let shown = if app.input.is_empty() && app.selected.is_none() {
        Span::styled("Ctrl-N to start a conversation", Style::new().fg(Color::DarkGray))
    } else {
        Span::raw(app.input.clone())
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![Span::raw("> "), shown])).block(input_block),
        input,
    );

    let hint = match &app.notice {
        Some(notice) => Span::styled(format!(" {notice}"), Style::new().fg(Color::Yellow)),
        None => Span::styled(
            " Enter send · ↑↓ conversations · Ctrl-N new · Ctrl-S safety number · ? help · Ctrl-Q quit",
            Style::new().fg(Color::DarkGray),
        ),
    };
    frame.render_widget(Paragraph::new(hint), hints);

    if let Some(overlay) = &app.overlay {
        draw_overlay(frame, overlay);
    }
}

fn draw_conversations(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let items: Vec<ListItem<'_>> = app
        .conversations
        .iter()
        .map(|c| {
            let selected = app.selected.as_deref() == Some(c.peer.as_str());
            let marker = if selected { "> " } else { "  " };
            let mut spans = vec![Span::raw(marker), Span::raw(c.peer.clone())];
            if c.unread > 0 {
                spans.push(Span::styled(
                    format!(" ({})", c.unread),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ));
            }
            let style =
                if selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
            ListItem::new(Line::from(spans)).style(style)
        })
        .collect();
    let list =
        List::new(items).block(Block::default().borders(Borders::ALL).title(" Conversations "));
    frame.render_widget(list, area);
}

fn draw_messages(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let Some(peer) = &app.selected else {
        let empty = Paragraph::new(
            "No conversation open.\nCtrl-N starts one by user id; ? shows all keys.",
        )
        .alignment(Alignment::Center)
        .block(Block::default().borders(Borders::ALL));
        frame.render_widget(empty, area);
        return;
    };
    let mut title = vec![Span::raw(format!(" {peer} "))];
    title.push(if app.peer.online {
        Span::styled("● online ", Style::new().fg(Color::Green))
    } else {
        Span::styled("○ away ", Style::new().fg(Color::DarkGray))
    });
    if app.peer.key_changed {
        title.push(Span::styled(
            "⚠ key changed ",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    } else if app.peer.verified {
        title.push(Span::styled("✔ verified ", Style::new().fg(Color::Green)));
    }
    // In the title, which never scrolls away: a relay withholding messages is shown however
    // long the conversation is.
    if app.peer.missing > 0 {
        let plural = if app.peer.missing == 1 { "message" } else { "messages" };
        title.push(Span::styled(
            format!("⚠ {} {plural} from {peer} missing ", app.peer.missing),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    let mut lines: Vec<Line<'_>> = Vec::new();
    for message in &app.messages {
        let time = clock(if message.outgoing {
            message.sent_at
        } else {
            message.received_at.unwrap_or(message.sent_at)
        });
        let who = if message.outgoing {
            Span::styled("you", Style::new().fg(Color::Cyan))
        } else {
            Span::styled(peer.clone(), Style::new().fg(Color::Magenta))
        };
        let body = match (&message.body, message.status.as_str()) {
            (_, "undecryptable") => Span::styled(
                "(this message could not be decrypted)",
                Style::new().fg(Color::Red).add_modifier(Modifier::ITALIC),
            ),
            (Some(text), _) => Span::raw(text.clone()),
            // A receipt: counted, nothing to show.
            (None, _) => continue,
        };
        let mut spans = vec![
            Span::styled(format!("{time} "), Style::new().fg(Color::DarkGray)),
            who,
            Span::raw("  "),
            body,
        ];
        if message.outgoing {
            spans.push(Span::styled(
                format!("  {}", status_mark(&message.status)),
                Style::new().fg(Color::DarkGray),
            ));
        }
        lines.push(Line::from(spans));
    }
    // The newest messages at the bottom, counted in screen rows: a long message wraps over
    // several, and counted as one it pushed the newest lines (and their status marks) below
    // the pane.
    let width = area.width.saturating_sub(2);
    let height = usize::from(area.height.saturating_sub(2));
    let mut rows = 0;
    let mut first = lines.len();
    while first > 0 && rows < height {
        first -= 1;
        rows += Paragraph::new(lines[first].clone()).wrap(Wrap { trim: false }).line_count(width);
    }
    let shown = lines.split_off(first);
    // The oldest shown message may start above the pane: its first rows are scrolled off.
    let above = u16::try_from(rows.saturating_sub(height)).unwrap_or(u16::MAX);
    let view = Paragraph::new(shown)
        .wrap(Wrap { trim: false })
        .scroll((above, 0))
        .block(Block::default().borders(Borders::ALL).title(Line::from(title)));
    frame.render_widget(view, area);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn draw_overlay(frame: &mut Frame<'_>, overlay: &Overlay) {
    let (title, lines, width, height): (String, Vec<Line<'_>>, u16, u16) = match overlay {
        Overlay::Help => (
            " Keys ".into(),
            vec![
                Line::raw("Enter        send the message"),
                Line::raw("↑ / ↓        previous / next conversation"),
                Line::raw("Ctrl-N       new conversation by user id"),
                Line::raw("Ctrl-S       safety number (verify who you talk to)"),
                Line::raw("Ctrl-T       on a changed key's number: trust the new key"),
                Line::raw("Esc          clear the input / close"),
                Line::raw("? or F1      this help"),
                Line::raw("Ctrl-Q       quit"),
                Line::raw(""),
                Line::raw("Marks: … sending   ✓ stored by the relay   ✓✓ delivered"),
                Line::raw(""),
                Line::styled("any key to close", Style::new().fg(Color::DarkGray)),
            ],
            62,
            15,
        ),
        Overlay::NewConversation(typed) => (
            " New conversation ".into(),
            vec![
                Line::raw("User id:"),
                Line::raw(format!("> {typed}")),
                Line::raw(""),
                Line::styled("Enter to open · Esc to cancel", Style::new().fg(Color::DarkGray)),
            ],
            44,
            7,
        ),
        Overlay::SafetyNumber { peer, groups, verified, changed } => {
            let mut lines = vec![Line::raw(format!("Safety number with {peer}:")), Line::raw("")];
            for row in groups.chunks(4) {
                lines.push(Line::styled(row.join("  "), Style::new().add_modifier(Modifier::BOLD)));
            }
            lines.push(Line::raw(""));
            lines.push(Line::raw(format!(
                "Compare it with {peer}'s screen, in person or by a call."
            )));
            lines.push(Line::raw(""));
            lines.push(Line::styled(
                if *changed {
                    "NEW number. Ctrl-T: it matches, trust it · any key: close".to_owned()
                } else if *verified {
                    "✔ verified · any key to close".to_owned()
                } else {
                    "v: they match, mark verified · any key: close".to_owned()
                },
                Style::new().fg(Color::Yellow),
            ));
            (" Safety number ".into(), lines, 60, 12)
        }
        Overlay::KeyChanged { peer } => (
            " Security warning ".into(),
            vec![
                Line::styled(
                    format!("{peer}'s security key has changed."),
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                ),
                Line::raw(""),
                Line::raw(format!("This happens when {peer} reinstalls or uses a new device.")),
                Line::raw("It could also mean someone is trying to intercept your messages."),
                Line::raw(format!("Messages to {peer} are blocked until you accept the new key.")),
                Line::raw(format!("Check the new safety number with {peer} first.")),
                Line::raw(""),
                Line::styled(
                    "s: show the new safety number (accept it from there) · Esc: not now",
                    Style::new().fg(Color::Yellow),
                ),
            ],
            70,
            11,
        ),
    };
    let area = centered(frame.area(), width, height);
    frame.render_widget(Clear, area);
    let block = Block::default().borders(Borders::ALL).title(title);
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block), area);
}
