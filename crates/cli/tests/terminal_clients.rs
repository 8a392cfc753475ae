//! Terminal clients through a real relay (`sotto serve` on a free port, real SQLite): two and
//! three clients chatting, offline delivery, a receiver stopped or killed mid-backlog, a key change after
//! `admin release-user`, and `sotto chat` driven through tmux as a person would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
// Relay processes are killed and reaped in `Drop`.
#![allow(clippy::zombie_processes)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

struct Relay {
    child: Child,
    url: String,
    database: String,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("relay.db").display());
        let log_path = dir.path().join("relay.log");
        // Port 0: the relay picks a free port and logs it, so tests running side by side never
        // race for one.
        let mut child = Command::new(SOTTO)
            .args(["serve", "--listen", "127.0.0.1:0", "--database", &database])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(line) = log.lines().find(|line| line.contains("relay listening")) {
                let address = line.rsplit("address=").next().unwrap().trim().to_owned();
                return Self { child, url: format!("http://{address}"), database, dir };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("sotto serve exited with {status}: {log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("sotto serve did not start");
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sotto(&self, home: &str, args: &[&str]) -> Output {
        Command::new(SOTTO)
            .args(["--server", &self.url, "--home"])
            .arg(self.home(home))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, home: &str, args: &[&str]) -> String {
        let output = self.sotto(home, args);
        assert!(
            output.status.success(),
            "sotto {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn two_clients_chat_both_ways_and_the_offline_one_catches_up() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    // Bob is offline (no process runs for him) while Alice writes.
    relay.ok("a", &["send", "bob", "Hi Bob"]);
    relay.ok("a", &["send", "bob", "are you there?\ttab and\nnewline"]);
    // Backspaces over the sender's name, a vertical tab and an escape sequence: printed as
    // escapes, so a message cannot pose as another sender's line or hide what follows.
    relay.ok("a", &["send", "bob", "\u{8}\u{8}\u{8}\u{8}\u{8}carol\u{b}\u{1b}[8m\u{202e}x"]);
    assert_eq!(
        lines(&relay.ok("b", &["recv"])),
        [
            "alice\tHi Bob",
            "alice\tare you there?\\ttab and\\nnewline",
            "alice\t\\u{0008}\\u{0008}\\u{0008}\\u{0008}\\u{0008}carol\\u{000b}\\u{001b}[8m\\u{202e}x",
        ]
    );
    assert_eq!(relay.ok("b", &["recv"]), "", "acknowledged messages do not come back");
    relay.ok("b", &["send", "alice", "Yes!"]);
    let json = relay.ok("a", &["recv", "--json"]);
    let line: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(line["sender"], "bob");
    assert_eq!(line["text"], "Yes!");
    assert!(line["id"].as_i64().unwrap() > 0 && line["sentAt"].as_i64().unwrap() > 0);
    // Safety numbers match on both sides: 12 groups of 5 digits.
    let from_alice = relay.ok("a", &["safety-number", "bob"]);
    let from_bob = relay.ok("b", &["safety-number", "alice"]);
    assert_eq!(from_alice, from_bob);
    let groups: Vec<&str> = from_alice.split_whitespace().collect();
    assert_eq!(groups.len(), 12);
    assert!(groups.iter().all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
    relay.ok("a", &["verify", "bob", "--yes"]);
}

#[test]
fn three_clients_all_reach_each_other() {
    let relay = Relay::start();
    for (home, user) in [("a", "alice"), ("b", "bob"), ("c", "carol")] {
        relay.ok(home, &["register", user]);
    }
    for (home, from) in [("a", "alice"), ("b", "bob"), ("c", "carol")] {
        for to in ["alice", "bob", "carol"].into_iter().filter(|to| *to != from) {
            relay.ok(home, &["send", to, &format!("{from} to {to}")]);
        }
    }
    for (home, me) in [("a", "alice"), ("b", "bob"), ("c", "carol")] {
        let mut got =
            lines(&relay.ok(home, &["recv"])).into_iter().map(str::to_owned).collect::<Vec<_>>();
        got.sort();
        let mut expected: Vec<String> = ["alice", "bob", "carol"]
            .into_iter()
            .filter(|from| *from != me)
            .map(|from| format!("{from}\t{from} to {me}"))
            .collect();
        expected.sort();
        assert_eq!(got, expected);
    }
}

#[test]
fn clear_errors_for_unknown_users_taken_ids_and_an_unreachable_relay() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    let output = relay.sotto("a", &["send", "nobody", "hi"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such user"), "{output:?}");
    let output = relay.sotto("x", &["register", "alice"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("taken"), "{output:?}");
    let output = relay.sotto("a", &["register", "again"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("already holds the identity alice"));
    let output = Command::new(SOTTO)
        .args(["--server", "http://127.0.0.1:9", "--home"])
        .arg(relay.home("a"))
        .args(["recv"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach the relay"),
        "{output:?}"
    );
}

/// A script must tell "nothing more to receive" from "the relay went away": `recv` exits
/// non-zero, saying so, when its connection ends under it, after printing what it received.
#[test]
fn recv_fails_clearly_when_the_relay_goes_away_and_prints_what_came_before() {
    use std::io::BufRead;
    let mut relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    relay.ok("a", &["send", "bob", "before the outage"]);
    let mut child = Command::new(SOTTO)
        .args(["--server", &relay.url, "--home"])
        .arg(relay.home("b"))
        .args(["recv", "--wait", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("before the outage"), "{line:?}");
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "a lost connection is a failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connection to the relay") && stderr.contains("was lost"), "{stderr}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_local_store_is_private_and_holds_no_plaintext_at_the_relay() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    relay.ok("a", &["send", "bob", "the eagle lands at midnight"]);
    assert_eq!(mode(&relay.home("a")), 0o700);
    assert_eq!(mode(&relay.home("a").join("sotto.db")), 0o600);
    let database = std::fs::read(relay.database.trim_start_matches("sqlite:")).unwrap();
    let needle = b"eagle lands";
    assert!(
        !database.windows(needle.len()).any(|w| w == needle),
        "plaintext in the relay's database"
    );
    relay.ok("b", &["recv"]);
}

/// Starts `recv --json` on Bob's store, sends it `signal` (a `kill` name) once it has printed
/// `lines` lines, and returns the relay ids and texts of everything it printed.
fn recv_until_signalled(relay: &Relay, lines: usize, signal: &str) -> Vec<(i64, String)> {
    use std::io::BufRead;
    let mut child = Command::new(SOTTO)
        .args(["--server", &relay.url, "--home"])
        .arg(relay.home("b"))
        .args(["recv", "--json", "--wait", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    let mut sent = false;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        printed.extend(json_lines(line.unwrap().as_bytes()));
        if printed.len() == lines && !sent {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal} failed");
            sent = true;
        }
    }
    child.wait().unwrap();
    assert!(sent, "recv printed only {} lines", printed.len());
    printed
}

fn json_lines(stdout: &[u8]) -> Vec<(i64, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (value["id"].as_i64().unwrap(), value["text"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn sixty_messages_to_bob(relay: &Relay) -> Vec<String> {
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    let texts: Vec<String> = (0..60).map(|n| format!("message {n}")).collect();
    for text in &texts {
        relay.ok("a", &["send", "bob", text]);
    }
    texts
}

#[test]
fn a_receiver_stopped_mid_backlog_loses_nothing_and_shows_nothing_twice() {
    let relay = Relay::start();
    let mut expected = sixty_messages_to_bob(&relay);
    let mut printed = Vec::new();
    // Stop `recv` in the middle of the backlog, the ways a supervisor or a person does, then let
    // one run finish.
    for signal in ["TERM", "INT", "HUP"] {
        let run = recv_until_signalled(&relay, 8, signal);
        assert!(run.len() < 30, "SIG{signal} did not stop recv: it printed {}", run.len());
        printed.extend(run);
    }
    printed.extend(json_lines(relay.ok("b", &["recv", "--json"]).as_bytes()));
    let mut texts: Vec<String> = printed.into_iter().map(|(_, text)| text).collect();
    texts.sort();
    expected.sort();
    assert_eq!(texts, expected, "every message exactly once");
}

#[test]
fn a_receiver_killed_mid_backlog_loses_nothing() {
    let relay = Relay::start();
    let expected = sixty_messages_to_bob(&relay);
    let mut printed = Vec::new();
    let kills = 3;
    for _ in 0..kills {
        printed.extend(recv_until_signalled(&relay, 8, "KILL"));
    }
    printed.extend(json_lines(relay.ok("b", &["recv", "--json"]).as_bytes()));
    // SIGKILL cannot be caught: the one message between its print and its record as shown when
    // the kill lands is printed again by the next run, under the same relay id. Nothing else.
    let mut by_id = std::collections::BTreeMap::<i64, (String, usize)>::new();
    for (id, text) in printed {
        let entry = by_id.entry(id).or_insert((text.clone(), 0));
        assert_eq!(entry.0, text, "one relay id, two texts");
        entry.1 += 1;
    }
    let mut texts: Vec<String> = by_id.values().map(|(text, _)| text.clone()).collect();
    texts.sort();
    let mut expected_sorted = expected;
    expected_sorted.sort();
    assert_eq!(texts, expected_sorted, "every message at least once");
    let reprinted: usize = by_id.values().map(|(_, times)| times - 1).sum();
    assert!(reprinted <= kills, "{reprinted} messages printed again after {kills} kills");
}

#[test]
fn two_processes_on_one_store_show_each_message_once() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    let sent: Vec<String> = (1..=30).map(|n| format!("message {n}")).collect();
    for text in &sent {
        relay.ok("a", &["send", "bob", text]);
    }
    // Two receivers on Bob's one store at once (a cron job beside an open chat): both get the
    // backlog pushed; every message must be decrypted and shown once between them.
    let spawn = || {
        Command::new(SOTTO)
            .args(["--server", &relay.url, "--home"])
            .arg(relay.home("b"))
            .args(["recv", "--wait", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let mut shown: Vec<String> = Vec::new();
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("could not be decrypted"), "{stderr}");
        shown.extend(
            lines(&String::from_utf8(output.stdout).unwrap()).iter().map(|l| l.to_string()),
        );
    }
    shown.sort();
    let mut expected: Vec<String> = sent.iter().map(|t| format!("alice\t{t}")).collect();
    expected.sort();
    assert_eq!(shown, expected);
    assert_eq!(relay.ok("b", &["recv"]), "");
}

#[test]
fn a_key_change_after_release_and_re_registration_blocks_sending_until_trusted() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    relay.ok("a", &["send", "bob", "before"]);
    relay.ok("b", &["recv"]);
    let before = relay.ok("a", &["safety-number", "bob"]);

    // Bob loses every device; the operator frees the id; Bob registers again.
    let output = Command::new(SOTTO)
        .args(["admin", "release-user", "bob", "--database", &relay.database])
        .output()
        .unwrap();
    assert!(output.status.success());
    relay.ok("b2", &["register", "bob"]);

    // Alice's client refuses to send silently to the new key.
    let output = relay.sotto("a", &["send", "bob", "secret for the old bob"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("identity key changed") && error.contains("sotto trust bob"), "{error}");
    // The safety number differs from before and matches the new Bob's.
    let after = relay.ok("a", &["safety-number", "bob"]);
    assert_ne!(before, after);
    assert_eq!(after, relay.ok("b2", &["safety-number", "alice"]));
    // After accepting, messages flow to the new Bob (the blocked one goes too: it was queued).
    relay.ok("a", &["trust", "bob"]);
    relay.ok("a", &["send", "bob", "after"]);
    let got = relay.ok("b2", &["recv"]);
    assert!(got.contains("alice\tafter"), "{got}");
    assert!(!got.contains("before"));
}

#[test]
fn a_new_identity_writing_to_us_shows_the_warning_on_receive() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    relay.ok("b", &["send", "alice", "hello"]);
    relay.ok("a", &["recv"]);
    let output = Command::new(SOTTO)
        .args(["admin", "release-user", "bob", "--database", &relay.database])
        .output()
        .unwrap();
    assert!(output.status.success());
    relay.ok("b2", &["register", "bob"]);
    relay.ok("b2", &["send", "alice", "it's me, new phone"]);
    let output = relay.sotto("a", &["recv"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "bob\tit's me, new phone\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("bob's identity key changed"));
    let blocked = relay.sotto("a", &["send", "bob", "hi"]);
    assert!(!blocked.status.success());
}

fn tmux(args: &[&str]) -> String {
    let output = Command::new("tmux").args(args).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for_screen(session: &str, needle: &str) -> String {
    let mut screen = String::new();
    for _ in 0..100 {
        screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(needle) {
            return screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{needle:?} never appeared on screen:\n{screen}");
}

#[test]
fn the_chat_ui_driven_through_tmux() {
    let relay = Relay::start();
    relay.ok("a", &["register", "alice"]);
    relay.ok("b", &["register", "bob"]);
    relay.ok("b", &["send", "alice", "hello from bob"]);
    let session = format!("sotto-test-{}", std::process::id());
    let command =
        format!("{SOTTO} --server {} --home {} chat", relay.url, relay.home("a").display());
    let _ = tmux(&["new-session", "-d", "-s", &session, "-x", "110", "-y", "30", &command]);
    let screen = wait_for_screen(&session, "hello from bob");
    assert!(screen.contains("● online"), "{screen}");

    // Reply as a person would: type and press Enter.
    tmux(&["send-keys", "-t", &session, "hi bob, alice here", "Enter"]);
    wait_for_screen(&session, "hi bob, alice here");
    assert!(relay.ok("b", &["recv"]).contains("alice\thi bob, alice here"));
    wait_for_screen(&session, "✓✓ delivered");

    // A new conversation by user id, the help screen, the safety number.
    relay.ok("c", &["register", "carol"]);
    tmux(&["send-keys", "-t", &session, "C-n"]);
    wait_for_screen(&session, "New conversation");
    tmux(&["send-keys", "-t", &session, "carol", "Enter"]);
    wait_for_screen(&session, "Message to carol");
    tmux(&["send-keys", "-t", &session, "?"]);
    wait_for_screen(&session, "this help");
    tmux(&["send-keys", "-t", &session, "Escape"]);
    tmux(&["send-keys", "-t", &session, "C-s"]);
    let screen = wait_for_screen(&session, "Safety number with carol");
    let expected = relay.ok("c", &["safety-number", "alice"]);
    let groups: Vec<&str> = expected.split_whitespace().collect();
    assert!(screen.contains(&groups[..4].join("  ")), "{screen}\n{expected}");
    tmux(&["send-keys", "-t", &session, "v"]);
    wait_for_screen(&session, "carol is verified");
    std::fs::write(relay.dir.path().join("tui.txt"), &screen).unwrap();
    tmux(&["send-keys", "-t", &session, "C-q"]);
    let _ = tmux(&["kill-session", "-t", &session]);
}
