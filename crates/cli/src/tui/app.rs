//! The chat screen's state and what each key does. No I/O: the engine feeds it data, the
//! renderer draws it, and key handling returns the [`Action`] for the engine to carry out, so
//! all of it is tested without a terminal.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use sotto_client::store::{ConversationSummary, StoredMessage};

/// The relay connection as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Connecting for the first time.
    Connecting,
    /// Logged in; messages flow.
    Online,
    /// Lost; trying again in `in_seconds` (attempt `attempt`).
    Reconnecting {
        /// Attempts so far.
        attempt: u32,
        /// Seconds until the next one.
        in_seconds: u64,
        /// Why the last attempt failed.
        reason: String,
    },
    /// Not trying (the identity is no longer accepted by the relay).
    Offline(String),
}

/// What is drawn over the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// Key help.
    Help,
    /// Typing the user id of a new conversation.
    NewConversation(String),
    /// The safety number with a contact.
    SafetyNumber {
        /// With whom.
        peer: String,
        /// 12 groups of 5 digits.
        groups: Vec<String>,
        /// Whether already verified.
        verified: bool,
        /// Whether the contact's identity changed (this is the new number).
        changed: bool,
    },
    /// A contact's identity changed: blocks the conversation until accepted.
    KeyChanged {
        /// Whose.
        peer: String,
    },
}

/// What the engine should do after a key press.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Leave.
    Quit,
    /// Send `text` to `peer`.
    Send {
        /// To whom.
        peer: String,
        /// What.
        text: String,
    },
    /// Open (and start, if new) the conversation with `peer`.
    Open(String),
    /// Show the safety number with `peer`.
    ShowSafetyNumber(String),
    /// Mark `peer` verified.
    Verify(String),
    /// Accept `peer`'s changed identity, if its safety number is still `number` (the one
    /// shown when the user chose to accept).
    Trust {
        /// Whose.
        peer: String,
        /// The 60 digits shown.
        number: String,
    },
}

/// A contact's state in the conversation header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Online, as far as presence tells.
    pub online: bool,
    /// Safety number verified.
    pub verified: bool,
    /// Identity changed and not accepted.
    pub key_changed: bool,
    /// Records from the peer that never arrived.
    pub missing: u64,
}

/// Everything on screen.
#[derive(Debug, Clone)]
pub struct App {
    /// Our user id.
    pub me: String,
    /// The relay connection.
    pub connection: Connection,
    /// Conversations, most recent first.
    pub conversations: Vec<ConversationSummary>,
    /// The open conversation.
    pub selected: Option<String>,
    /// Its messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// What we know about the open conversation's peer.
    pub peer: PeerInfo,
    /// The input line.
    pub input: String,
    /// An overlay, if any.
    pub overlay: Option<Overlay>,
    /// A one-line notice (errors, confirmations).
    pub notice: Option<String>,
}

impl App {
    /// An empty screen for `me`.
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            connection: Connection::Connecting,
            conversations: Vec::new(),
            selected: None,
            messages: Vec::new(),
            peer: PeerInfo::default(),
            input: String::new(),
            overlay: None,
            notice: None,
        }
    }

    fn select_offset(&mut self, offset: isize) -> Action {
        if self.conversations.is_empty() {
            return Action::None;
        }
        let current = self
            .selected
            .as_ref()
            .and_then(|peer| self.conversations.iter().position(|c| &c.peer == peer))
            .unwrap_or(0);
        let last = self.conversations.len() as isize - 1;
        let next = (current as isize + offset).clamp(0, last) as usize;
        Action::Open(self.conversations[next].peer.clone())
    }

    /// Handles a key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            return Action::Quit;
        }
        if let Some(overlay) = self.overlay.clone() {
            return self.on_overlay_key(overlay, key);
        }
        self.notice = None;
        match key.code {
            KeyCode::Char('n') if ctrl => {
                self.overlay = Some(Overlay::NewConversation(String::new()));
                Action::None
            }
            KeyCode::Char('s') if ctrl => match &self.selected {
                Some(peer) => Action::ShowSafetyNumber(peer.clone()),
                None => Action::None,
            },
            KeyCode::Char('?') if self.input.is_empty() => {
                self.overlay = Some(Overlay::Help);
                Action::None
            }
            KeyCode::F(1) => {
                self.overlay = Some(Overlay::Help);
                Action::None
            }
            KeyCode::Up => self.select_offset(-1),
            KeyCode::Down => self.select_offset(1),
            KeyCode::Enter => {
                let text = self.input.trim().to_owned();
                match (&self.selected, text.is_empty()) {
                    (_, true) => Action::None,
                    (None, false) => {
                        self.notice = Some("start a conversation first: Ctrl-N".to_owned());
                        Action::None
                    }
                    (Some(peer), false) if self.peer.key_changed => {
                        self.overlay = Some(Overlay::KeyChanged { peer: peer.clone() });
                        Action::None
                    }
                    (Some(peer), false) => {
                        self.input.clear();
                        Action::Send { peer: peer.clone(), text }
                    }
                }
            }
            KeyCode::Backspace => {
                self.input.pop();
                Action::None
            }
            KeyCode::Esc => {
                self.input.clear();
                Action::None
            }
            KeyCode::Char(c) if !ctrl => {
                self.input.push(c);
                Action::None
            }
            _ => Action::None,
        }
    }

    fn on_overlay_key(&mut self, overlay: Overlay, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match overlay {
            Overlay::Help => {
                self.overlay = None;
                Action::None
            }
            Overlay::NewConversation(mut typed) => match key.code {
                KeyCode::Esc => {
                    self.overlay = None;
                    Action::None
                }
                KeyCode::Enter if !typed.trim().is_empty() => {
                    self.overlay = None;
                    Action::Open(typed.trim().to_ascii_lowercase())
                }
                KeyCode::Backspace => {
                    typed.pop();
                    self.overlay = Some(Overlay::NewConversation(typed));
                    Action::None
                }
                KeyCode::Char(c) => {
                    typed.push(c);
                    self.overlay = Some(Overlay::NewConversation(typed));
                    Action::None
                }
                _ => Action::None,
            },
            Overlay::SafetyNumber { peer, groups, verified, changed } => match key.code {
                KeyCode::Char('v') if !verified && !changed && !ctrl => {
                    self.overlay = None;
                    Action::Verify(peer)
                }
                // A chord, not a letter: the warning that leads here opens by itself, often
                // while the user is typing, and a stray key must never trust a new key.
                KeyCode::Char('t') if changed && ctrl => {
                    self.overlay = None;
                    Action::Trust { peer, number: groups.concat() }
                }
                _ => {
                    self.overlay = None;
                    Action::None
                }
            },
            // Accepting goes through the new safety number (and a chord there), never from
            // here: this warning appears unasked, in the middle of typing.
            Overlay::KeyChanged { peer } => match key.code {
                KeyCode::Char('s') => Action::ShowSafetyNumber(peer),
                KeyCode::Esc => {
                    self.overlay = None;
                    Action::None
                }
                // Blocking: nothing else gets through until the user decides.
                _ => Action::None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    #[test]
    fn typing_and_enter_sends_to_the_open_conversation() {
        let mut app = App::new("alice");
        app.selected = Some("bob".into());
        typed(&mut app, "hi bob");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Send { peer: "bob".into(), text: "hi bob".into() }
        );
        assert!(app.input.is_empty());
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None, "nothing to send");
    }

    #[test]
    fn new_conversation_by_user_id() {
        let mut app = App::new("alice");
        app.on_key(ctrl('n'));
        typed(&mut app, "Carol");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Open("carol".into()));
        assert_eq!(app.overlay, None);
    }

    #[test]
    fn a_changed_key_blocks_sending_until_accepted() {
        let mut app = App::new("alice");
        app.selected = Some("bob".into());
        app.peer.key_changed = true;
        typed(&mut app, "hello");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert_eq!(app.overlay, Some(Overlay::KeyChanged { peer: "bob".into() }));
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None, "blocking");
        assert_eq!(app.on_key(key(KeyCode::Char('x'))), Action::None, "blocking");
        assert_eq!(app.on_key(key(KeyCode::Char('a'))), Action::None, "no letter accepts here");
        assert_eq!(app.on_key(ctrl('t')), Action::None, "nor a chord: the number comes first");
        assert_eq!(app.overlay, Some(Overlay::KeyChanged { peer: "bob".into() }));
        assert_eq!(app.on_key(key(KeyCode::Char('s'))), Action::ShowSafetyNumber("bob".into()));
    }

    #[test]
    fn a_changed_key_is_accepted_only_by_a_chord_on_its_safety_number() {
        let groups: Vec<String> = (0..12).map(|i| format!("{i:05}")).collect();
        let number = || Overlay::SafetyNumber {
            peer: "bob".into(),
            groups: groups.clone(),
            verified: false,
            changed: true,
        };
        let mut app = App::new("alice");
        app.selected = Some("bob".into());
        app.peer.key_changed = true;
        app.overlay = Some(number());
        assert_eq!(app.on_key(key(KeyCode::Char('a'))), Action::None, "a typed letter closes");
        assert_eq!(app.overlay, None);
        app.overlay = Some(number());
        assert_eq!(
            app.on_key(key(KeyCode::Char('v'))),
            Action::None,
            "a changed key is not verified"
        );
        app.overlay = Some(number());
        assert_eq!(
            app.on_key(ctrl('t')),
            Action::Trust { peer: "bob".into(), number: groups.concat() },
            "the number shown goes with the acceptance"
        );
    }

    #[test]
    fn help_on_question_mark_only_with_an_empty_input() {
        let mut app = App::new("alice");
        app.on_key(key(KeyCode::Char('?')));
        assert_eq!(app.overlay, Some(Overlay::Help));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.overlay, None);
        typed(&mut app, "why?");
        assert_eq!(app.input, "why?");
    }

    #[test]
    fn safety_number_overlay_verifies() {
        let mut app = App::new("alice");
        app.overlay = Some(Overlay::SafetyNumber {
            peer: "bob".into(),
            groups: vec!["12345".into(); 12],
            verified: false,
            changed: false,
        });
        assert_eq!(app.on_key(key(KeyCode::Char('v'))), Action::Verify("bob".into()));
    }

    #[test]
    fn arrows_move_between_conversations() {
        let mut app = App::new("alice");
        app.conversations = ["bob", "carol"]
            .iter()
            .map(|p| ConversationSummary {
                peer: (*p).into(),
                unread: 0,
                last: None,
                updated_at: 0,
            })
            .collect();
        app.selected = Some("bob".into());
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::Open("carol".into()));
        assert_eq!(app.on_key(key(KeyCode::Up)), Action::Open("bob".into()));
        assert_eq!(app.on_key(ctrl('q')), Action::Quit);
    }
}
