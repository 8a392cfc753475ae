//! The terminal client's script-friendly commands: register, send, recv, safety-number, verify,
//! trust.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use sotto_client::display::{json_line, printable};
use sotto_client::relay::{RelayClient, RelayError};
use sotto_client::socketio::Push;
use sotto_client::{Client, ClientError, Event, Trusted};
use sotto_protocol::UserId;
use tokio::sync::mpsc;

/// Where the client talks to and keeps its state.
#[derive(Debug, Clone)]
pub struct Place {
    /// `--server`, when given; otherwise the server the identity registered with.
    pub server: Option<String>,
    /// `--home`.
    pub home: PathBuf,
}

/// The default relay.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:3000";

/// The default home folder: the user's data directory.
pub fn default_home() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("sotto")
}

fn parse_user(text: &str) -> anyhow::Result<UserId> {
    UserId::parse(text).map_err(|e| anyhow::anyhow!("invalid user id {text:?}: {e}"))
}

/// A plain-language explanation of a client error.
pub fn explain(error: &ClientError, server: &str) -> String {
    match error {
        ClientError::Relay(RelayError::Transport(_)) => {
            format!("cannot reach the relay at {server}: is it running? ({error})")
        }
        ClientError::Relay(RelayError::Refused(refusal)) => refusal.explain(),
        other => other.to_string(),
    }
}

async fn open(place: &Place) -> anyhow::Result<(Client, String)> {
    let client = Client::open(&place.home).await?;
    let server = place.server.clone().unwrap_or_else(|| client.server().to_owned());
    Ok((client, server))
}

async fn connect(
    client: &Client,
    server: &str,
) -> anyhow::Result<(RelayClient, mpsc::UnboundedReceiver<Push>, usize)> {
    match client.connect(server).await {
        Ok((relay, pushes, answer)) => Ok((relay, pushes, answer.queued)),
        Err(error) => bail!("{}", explain(&error, server)),
    }
}

/// Prints warnings for events a script's stdout should not carry.
fn warn(event: &Event) {
    match event {
        Event::KeyChanged { peer } => eprintln!(
            "warning: {peer}'s identity key changed. Compare safety numbers \
             (sotto safety-number {peer}), then accept it with: sotto trust {peer}"
        ),
        Event::Missing { peer, count } => {
            let plural = if *count == 1 { "message" } else { "messages" };
            eprintln!(
                "warning: {count} {plural} from {peer} are missing (not delivered by the relay)"
            );
        }
        Event::Undecryptable { peer } => {
            eprintln!("warning: a message from {peer} could not be decrypted")
        }
        Event::DigestMismatch { peer } => eprintln!(
            "warning: {peer} received a message under our name that this device did not send \
             (another device uses this identity, or this store was restored from a copy)"
        ),
        Event::Unconfirmed { peer, messages } => {
            let count = messages.len();
            let plural = if count == 1 { "message" } else { "messages" };
            eprintln!(
                "warning: the relay reported {count} {plural} to {peer} delivered, but {peer} \
                 says they never arrived"
            );
        }
        Event::Failed { reason, .. } => eprintln!("error: a message could not be sent: {reason}"),
        _ => {}
    }
}

/// `sotto register USER`.
pub async fn register(place: &Place, user: &str) -> anyhow::Result<()> {
    let user = parse_user(user)?;
    let server = place.server.clone().unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    match Client::register(&place.home, &server, &user).await {
        Ok((client, relay, _)) => {
            relay.close();
            client.close().await;
            eprintln!("registered {user} at {server}; keys are in {}", place.home.display());
            Ok(())
        }
        Err(error) => bail!("{}", explain(&error, &server)),
    }
}

/// `sotto send USER TEXT`: exits once the relay has stored the message.
pub async fn send(place: &Place, to: &str, text: &str) -> anyhow::Result<()> {
    let peer = parse_user(to)?;
    let (client, server) = open(place).await?;
    let message_id = client
        .compose(&peer, text)
        .await
        .map_err(|e| anyhow::anyhow!("{}", explain(&e, &server)))?;
    let (relay, _pushes, _) = connect(&client, &server)
        .await
        .context("the message is queued and will be sent on the next connection")?;
    let events = client
        .flush_outbox(&relay)
        .await
        .map_err(|e| anyhow::anyhow!("{} (the message stays queued)", explain(&e, &server)))?;
    relay.close();
    client.close().await;
    let mut stored = false;
    for event in &events {
        match event {
            Event::Stored { message_id: id } if *id == message_id => stored = true,
            Event::Failed { message_id: id, reason } if *id == message_id => {
                bail!("{to}: {reason}")
            }
            Event::KeyChanged { peer: changed } if changed == peer.as_str() => {
                bail!("{}", ClientError::KeyChanged(peer.to_string()))
            }
            other => warn(other),
        }
    }
    if !stored {
        bail!("the message to {to} is queued but the relay has not stored it yet");
    }
    Ok(())
}

/// One received message as `recv --json` prints it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLine<'a> {
    sender: &'a str,
    text: &'a str,
    id: Option<i64>,
    sent_at: i64,
    received_at: Option<i64>,
}

fn print_message(
    out: &mut impl Write,
    message: &sotto_client::store::StoredMessage,
    json: bool,
) -> anyhow::Result<()> {
    let text = message.body.as_deref().unwrap_or_default();
    if json {
        let line = JsonLine {
            sender: &message.peer,
            text,
            id: message.server_id,
            sent_at: message.sent_at,
            received_at: message.received_at,
        };
        // Scripts read it as JSON; a person may still watch it on a terminal.
        writeln!(out, "{}", json_line(&line)?)?;
    } else {
        // One line per message whatever it holds: control characters, escape sequences and
        // bidirectional controls are written as escapes, so a message cannot move the cursor
        // over another sender's name, forge a line or hide what follows.
        writeln!(out, "{}\t{}", message.peer, printable(text))?;
    }
    out.flush()?;
    Ok(())
}

/// A request to stop from the user or a supervisor (Ctrl-C, `timeout`, systemd, a closed
/// terminal): SIGINT, SIGTERM or SIGHUP. Installing the handlers replaces those signals' default
/// action, which would end the process between printing a message and recording it as shown.
struct StopRequest {
    signals: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    asked: bool,
}

impl StopRequest {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let signals = Box::pin(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = hangup.recv() => {}
            }
        });
        Ok(Self { signals, asked: false })
    }

    /// Whether a stop has been asked for by now (does not wait).
    fn asked(&mut self) -> bool {
        if !self.asked {
            self.asked = futures_util::FutureExt::now_or_never(self.signals.as_mut()).is_some();
        }
        self.asked
    }

    /// Resolves once a stop is asked for.
    async fn wait(&mut self) {
        if !self.asked {
            self.signals.as_mut().await;
            self.asked = true;
        }
    }
}

/// `sotto recv`: prints received messages, each saved and acknowledged.
///
/// Every message is saved (with the session state that decrypted it) before the relay is told it
/// arrived, then printed, then recorded as shown; messages saved but not yet shown are printed by
/// the next run. A stop request (SIGINT, SIGTERM, SIGHUP) is honoured between two messages, so
/// each message is printed exactly once. Only a SIGKILL landing between a print and its record
/// can print that one message again on the next run (`--json` carries the relay's id to tell).
pub async fn recv(place: &Place, wait: Option<u64>, json: bool) -> anyhow::Result<()> {
    let mut stop = StopRequest::install()?;
    let (client, server) = tokio::select! {
        opened = open(place) => opened?,
        () = stop.wait() => return Ok(()),
    };
    let connected = tokio::select! {
        connected = connect(&client, &server) => Some(connected?),
        () = stop.wait() => None,
    };
    let Some((relay, mut pushes, queued)) = connected else {
        client.close().await;
        return Ok(());
    };
    // Messages a failed `send` left queued go out first; if they cannot (the relay is busy,
    // a limit), they wait for the next run, and receiving goes ahead.
    match client.flush_outbox(&relay).await {
        Ok(events) => events.iter().for_each(warn),
        Err(error) => eprintln!(
            "warning: queued messages not sent yet, kept for the next run: {}",
            explain(&error, &server)
        ),
    }
    let mut out = std::io::stdout().lock();
    // Saved by an earlier run that stopped before printing them (not by one running now).
    for message in client.store().claim_unseen().await? {
        if stop.asked() {
            break;
        }
        match (&message.body, message.status.as_str()) {
            (_, "undecryptable") => warn(&Event::Undecryptable { peer: message.peer.clone() }),
            (Some(_), _) => print_message(&mut out, &message, json)?,
            (None, _) => {}
        }
        client.store().mark_seen(&[message.id]).await?;
    }
    let mut handled = 0usize;
    let mut lost = false;
    // Without --wait: return once the backlog announced at login is handled (and nothing more
    // arrives for a moment). With it: return after SECONDS with nothing new.
    let quiet = wait.map_or(Duration::from_millis(500), Duration::from_secs);
    while !stop.asked() {
        let timeout =
            if wait.is_none() && handled < queued { Duration::from_secs(10) } else { quiet };
        let push = tokio::select! {
            received = tokio::time::timeout(timeout, pushes.recv()) => received,
            () = stop.wait() => break,
        };
        let push = match push {
            Ok(Some(push)) => push,
            // Quiet for the whole time: done.
            Err(_) => break,
            // The connection ended under us: what arrived is saved and printed, but a script
            // must be able to tell this from "nothing more to receive".
            Ok(None) => {
                lost = true;
                break;
            }
        };
        let is_messages = push.event == "message:receive";
        // A push taken is handled whole: its messages are saved and acknowledged.
        let events = client
            .handle(&relay, push)
            .await
            .map_err(|e| anyhow::anyhow!("{}", explain(&e, &server)))?;
        if is_messages {
            handled += 1.max(events.len());
        }
        for event in events {
            match &event {
                // Once a stop is asked for, the rest stay saved and unshown for the next run.
                Event::Received(_) if stop.asked() => {}
                Event::Received(message) => {
                    print_message(&mut out, message, json)?;
                    client.store().mark_seen(&[message.id]).await?;
                }
                other => warn(other),
            }
        }
    }
    if !lost {
        for event in client.refresh_delivery(&relay).await.unwrap_or_default() {
            warn(&event);
        }
    }
    relay.close();
    client.close().await;
    if lost {
        anyhow::bail!(
            "the connection to the relay at {server} was lost; run again to receive the rest"
        );
    }
    Ok(())
}

async fn number(place: &Place, peer: &UserId) -> anyhow::Result<(Client, String, bool)> {
    let (client, server) = open(place).await?;
    if client.store().contact(peer.as_str()).await?.is_none() {
        let (relay, _pushes, _) = connect(&client, &server).await?;
        client
            .learn_identity(&relay, peer)
            .await
            .map_err(|e| anyhow::anyhow!("{}", explain(&e, &server)))?;
        relay.close();
    }
    let (number, changed) = client.safety_number(peer).await?;
    Ok((client, number.grouped(), changed))
}

/// `sotto safety-number USER`: the 60 digits in 12 groups of 5.
pub async fn safety_number(place: &Place, peer: &str) -> anyhow::Result<()> {
    let peer = parse_user(peer)?;
    let (client, grouped, changed) = number(place, &peer).await?;
    let verified = client.store().contact(peer.as_str()).await?.is_some_and(|c| c.verified);
    println!("{grouped}");
    if changed {
        eprintln!(
            "{peer}'s identity changed; this is the new number. Accept it with: sotto trust {peer}"
        );
    } else if verified {
        eprintln!("verified");
    } else {
        eprintln!(
            "not verified: compare with {peer} in person or over a trusted channel, then run: sotto verify {peer}"
        );
    }
    client.close().await;
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `sotto verify USER`: marks the safety number verified after the person confirms it.
pub async fn verify(place: &Place, peer: &str, yes: bool) -> anyhow::Result<()> {
    let peer = parse_user(peer)?;
    let (client, grouped, changed) = number(place, &peer).await?;
    if changed {
        bail!("{peer}'s identity changed; accept it first with: sotto trust {peer}");
    }
    println!("{grouped}");
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("run in a terminal to confirm, or pass --yes after comparing the numbers");
        }
        if !confirm(&format!("Does {peer} see exactly these digits?"))? {
            bail!("not verified");
        }
    }
    client.verify(&peer).await?;
    eprintln!("{peer} is verified");
    client.close().await;
    Ok(())
}

/// `sotto trust USER`: accepts a changed identity key.
pub async fn trust(place: &Place, peer: &str, expected: Option<&str>) -> anyhow::Result<()> {
    let peer = parse_user(peer)?;
    let (client, _server) = open(place).await?;
    let number = match client.trust(&peer, expected).await? {
        Trusted::Accepted(number) => number,
        Trusted::NothingPending => bail!("{peer}'s identity has not changed; nothing to accept"),
        Trusted::OtherNumber => bail!(
            "{peer}'s pending key does not have that safety number (it may have changed again): \
             nothing accepted; run `sotto safety-number {peer}` and compare again"
        ),
    };
    println!("{}", number.grouped());
    eprintln!(
        "accepted {peer}'s new identity; compare the safety number above, then run: sotto verify {peer}"
    );
    client.close().await;
    Ok(())
}
