//! The `sotto` command: the relay (`serve`), operator tools (`admin`) and the terminal client.

// A command-line program talks through stdout (results) and stderr (everything else).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sotto_server::{Config, storage};
use tracing_subscriber::EnvFilter;

mod bench;
mod commands;
mod tui;

/// Sotto: end-to-end encrypted chat through a relay that sees only keys and ciphertext.
#[derive(Debug, Parser)]
#[command(name = "sotto", version, about, long_about = None)]
struct Cli {
    /// The relay to talk to (default: the one the identity registered with, else
    /// http://127.0.0.1:3000).
    #[arg(long, global = true, env = "SOTTO_SERVER")]
    server: Option<String>,
    /// The folder holding this client's identity and history (one identity per folder).
    #[arg(long, global = true, env = "SOTTO_HOME")]
    home: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay: Socket.IO on /socket.io, the web client on /, /healthz and /metrics.
    Serve(ServeArgs),
    /// Operator tools that work directly on the relay's database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Create keys, claim USER on the relay and upload prekeys.
    Register {
        /// The user id to claim.
        user: String,
    },
    /// Send one message; exits 0 once the relay has stored it or the recipient has it.
    Send {
        /// The recipient.
        user: String,
        /// The message.
        text: String,
    },
    /// Print received messages (`SENDER<TAB>TEXT`), each saved before it is acknowledged.
    Recv {
        /// Keep receiving until SECONDS pass with nothing new.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// JSON lines with sender, text, id and times.
        #[arg(long)]
        json: bool,
    },
    /// Print the 60-digit safety number shared with USER, in 12 groups of 5.
    SafetyNumber {
        /// The contact.
        user: String,
    },
    /// Mark USER's safety number verified once they confirm it matches.
    Verify {
        /// The contact.
        user: String,
        /// Do not ask (you compared the numbers already).
        #[arg(long)]
        yes: bool,
    },
    /// Accept USER's changed identity key (after comparing the new safety number).
    Trust {
        /// The contact.
        user: String,
        /// The new safety number you compared (`sotto safety-number USER`): accepted only if
        /// the pending key still has it. Without it, whatever key is pending is accepted and
        /// its number printed, to compare afterwards.
        #[arg(long, value_name = "DIGITS")]
        number: Option<String>,
    },
    /// The terminal chat: conversations, safety numbers, key-change warnings. `?` for help.
    Chat,
    /// Measure a running relay: throughput, fixed-rate latency, or memory per idle connection.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SOTTO_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Database: `sqlite:PATH` (created when missing), `sqlite::memory:`, or `postgres://…`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:sotto.db")]
    database: String,
    /// Public names (`host` or `host:port`) clients reach this relay by; login signatures are
    /// bound to the name a client connected to. Repeat for several. The listening address is
    /// always accepted; on a wildcard address without any, the Host header clients send is.
    #[arg(long = "public-host", env = "SOTTO_PUBLIC_HOSTS", value_delimiter = ',')]
    public_hosts: Vec<String>,
    /// Redis (`redis://host:port`) to run several nodes against one PostgreSQL: the Socket.IO
    /// Redis adapter carries pushes and presence between them.
    #[arg(long, env = "REDIS_URL")]
    redis: Option<String>,
    /// Prefix of this deployment's Redis channels.
    #[arg(long, env = "SOTTO_REDIS_PREFIX", default_value = "sotto")]
    redis_prefix: String,
    /// With --redis: how long a node's presence lease lasts, in milliseconds. Once a node's
    /// lease lapses (killed, cut off), another node announces that its users left (unless
    /// they are connected elsewhere).
    #[arg(long, env = "SOTTO_NODE_LEASE_MS", default_value_t = 15_000)]
    node_lease_ms: u64,
    /// Offer only the WebSocket transport (no HTTP long-polling), e.g. behind a load balancer
    /// without sticky sessions.
    #[arg(long, env = "SOTTO_WEBSOCKET_ONLY")]
    websocket_only: bool,
    /// Events per second per connection (0: unlimited).
    #[arg(long, env = "SOTTO_EVENTS_PER_SECOND", default_value_t = sotto_server::Limits::default().events_per_second)]
    events_per_second: u32,
    /// Messages per second from one sender to one recipient (0: unlimited).
    #[arg(long, env = "SOTTO_PAIR_MESSAGES_PER_SECOND", default_value_t = sotto_server::Limits::default().pair_messages_per_second)]
    pair_messages_per_second: u32,
    /// Undelivered messages one recipient may have queued.
    #[arg(long, env = "SOTTO_MAX_QUEUE", default_value_t = sotto_server::Limits::default().max_queue_per_recipient)]
    max_queue: usize,
    /// Longest a message may wait for the storage writer, in milliseconds; one that waited
    /// longer is refused with the retryable `busy`.
    #[arg(long, env = "SOTTO_MAX_SEND_BACKLOG_MS", default_value_t = 250)]
    max_send_backlog_ms: u64,
    /// How long a message pushed to a connected recipient may wait for its acknowledgement
    /// before it is written, in milliseconds (acknowledged in time, it is never written; 0:
    /// store every message before pushing it). Its sender hears "stored" either way only once
    /// it is on disk or in the recipient's hands.
    #[arg(long, env = "SOTTO_WRITE_BEHIND_MS", default_value_t = 50)]
    write_behind_ms: u64,
    /// Logged-in connections one user may hold at once (on each node; 0: unlimited): past it a
    /// login is refused with `too_many_connections` until one of them closes.
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS_PER_USER", default_value_t = sotto_server::Limits::default().max_connections_per_user)]
    max_connections_per_user: usize,
    /// Connections the relay holds open at once; past it new ones are answered 503 and closed
    /// as they arrive
    /// (0: the open-file limit, raised to its hard value, less a reserve for the relay's own
    /// files).
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Registrations per hour from one address (an IPv4 address or an IPv6 /64), after a
    /// burst of half as many (0: unlimited).
    #[arg(long, env = "SOTTO_REGISTRATIONS_PER_HOUR", default_value_t = sotto_server::Limits::default().registrations_per_hour)]
    registrations_per_hour: u32,
    /// Addresses of reverse proxies whose `X-Forwarded-For` names the client (comma-separated
    /// or repeated). Without it, behind a proxy, all clients share the proxy's address.
    #[arg(long = "trusted-proxy", env = "SOTTO_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Log format.
    #[arg(long, env = "SOTTO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Free a user id whose owner lost every device. Its keys and the messages queued for it
    /// are deleted; whoever registers the id next has new keys, and contacts see a key change.
    ReleaseUser {
        /// The user id to free.
        user: String,
        /// The relay's database.
        #[arg(long, env = "DATABASE_URL")]
        database: String,
    },
}

/// Libraries that log whole frames or packets at debug and trace level. They are capped
/// whatever `RUST_LOG` says, because frames carry keys and ciphertext and logs must not.
const PAYLOAD_LOGGING_TARGETS: [&str; 5] =
    ["tungstenite", "tokio_tungstenite", "engineioxide", "socketioxide", "hyper"];

fn init_logging(json: bool) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let wanted = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A filter of its own that every event must pass as well, not directives inside
    // `RUST_LOG`'s filter: there the most specific directive wins, and
    // `socketioxide::client=debug` would override a cap on `socketioxide`.
    let cap = PAYLOAD_LOGGING_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |cap, target| {
            cap.with_target(*target, LevelFilter::INFO)
        });
    // Colours only for a terminal: a log file or journal gets plain text.
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let output = if json { output.json().boxed() } else { output.boxed() };
    tracing_subscriber::registry().with(output.with_filter(cap).with_filter(wanted)).init();
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format == "json");
    let mut config = Config::new(args.listen, args.database);
    config.public_hosts = args.public_hosts;
    config.allow_polling = !args.websocket_only;
    config.redis_url = args.redis;
    config.redis_prefix = args.redis_prefix;
    config.node_lease = std::time::Duration::from_millis(args.node_lease_ms.max(3));
    config.limits.events_per_second = args.events_per_second;
    config.limits.pair_messages_per_second = args.pair_messages_per_second;
    config.limits.max_queue_per_recipient = args.max_queue;
    config.limits.max_send_backlog = std::time::Duration::from_millis(args.max_send_backlog_ms);
    config.write_behind = std::time::Duration::from_millis(args.write_behind_ms);
    config.limits.max_connections_per_user = args.max_connections_per_user;
    config.limits.max_connections = args.max_connections;
    config.limits.registrations_per_hour = args.registrations_per_hour;
    config.limits.registrations_burst = args.registrations_per_hour.div_ceil(2);
    config.trusted_proxies = args.trusted_proxies;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    sotto_server::serve(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::ReleaseUser { user, database } => {
            let user = sotto_protocol::UserId::parse(&user)
                .map_err(|e| anyhow::anyhow!("invalid user id {user:?}: {e}"))?;
            let storage = storage::open(&database).await?;
            let released = storage.release_user(user.as_str()).await?;
            storage.close().await;
            if released {
                eprintln!("released {user}: its keys and undelivered messages are deleted");
                Ok(())
            } else {
                anyhow::bail!("no user {user} in this database")
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Bench(args) = cli.command {
        // The bench runs its own single-threaded runtime.
        let server = cli.server.unwrap_or_else(|| commands::DEFAULT_SERVER.to_owned());
        return match bench::run(&server, args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("sotto bench: {error:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sotto: cannot start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let place = commands::Place {
        server: cli.server.clone(),
        home: cli.home.clone().unwrap_or_else(commands::default_home),
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Admin(command) => admin(command).await,
        Command::Register { user } => commands::register(&place, &user).await,
        Command::Send { user, text } => commands::send(&place, &user, &text).await,
        Command::Recv { wait, json } => commands::recv(&place, wait, json).await,
        Command::SafetyNumber { user } => commands::safety_number(&place, &user).await,
        Command::Verify { user, yes } => commands::verify(&place, &user, yes).await,
        Command::Trust { user, number } => commands::trust(&place, &user, number.as_deref()).await,
        Command::Chat => tui::run(&place).await,
        Command::Bench(_) => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sotto: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
