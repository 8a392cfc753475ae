//! A short run of each `sotto bench` mode against a real relay process: the bench's own
//! bookkeeping is checked (everything sent arrives, once; the JSON has its fields), never its
//! speed. Figures come from full runs, described in docs/PERFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
// The relay process is killed and reaped in `Drop`.
#![allow(clippy::zombie_processes)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

struct RelayProcess {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    fn start(limited: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let database = format!("sqlite:{}", dir.path().join("relay.db").display());
        let child = Command::new(SOTTO)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", &database])
            // As docs/PERFORMANCE.md runs it: the per-pair and per-address limits are for
            // people, not benches.
            .args(if limited {
                &[][..]
            } else {
                &[
                    "--pair-messages-per-second",
                    "100000",
                    "--events-per-second",
                    "100000",
                    "--registrations-per-hour",
                    "0",
                ][..]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn bench(&self, args: &[&str]) -> Value {
        let pid = self.child.id().to_string();
        let output = Command::new(SOTTO)
            .args(["--server", &self.url, "bench", "--json", "--server-pid", &pid])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn number(result: &Value, key: &str) -> f64 {
    result[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {result}"))
}

fn check_delivery(result: &Value) {
    assert!(number(result, "total_sent") > 0.0, "{result}");
    assert_eq!(result["total_sent"], result["total_received"], "{result}");
    assert_eq!(number(result, "lost"), 0.0, "{result}");
    assert_eq!(number(result, "duplicates"), 0.0, "{result}");
    assert_eq!(number(result, "errors"), 0.0, "{result}");
    assert!(number(result, "delivered_msgs_per_s") > 0.0, "{result}");
    for percentile in ["p50", "p90", "p99", "max"] {
        assert!(result["latency_us"][percentile].is_u64(), "{result}");
    }
    assert!(number(result, "server_cpu_us_per_msg") > 0.0, "{result}");
    assert!(number(result, "bench_cpu_s") > 0.0, "{result}");
    assert!(result["authentication_s"].is_number() && result["setup_s"].is_number());
}

#[test]
fn throughput_rate_and_idle_modes_report_what_happened() {
    let relay = RelayProcess::start(false);
    let throughput = relay.bench(&[
        "--pairs",
        "4",
        "--window",
        "8",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--label",
        "smoke",
    ]);
    assert_eq!(throughput["mode"], "throughput");
    assert_eq!(throughput["label"], "smoke");
    check_delivery(&throughput);
    assert_eq!(throughput["duration_s"], 1.0, "the rate is over the window's exact length");
    assert!(throughput["schedule_lag_us"].is_null(), "no schedule to lag: {throughput}");

    let rate =
        relay.bench(&["--pairs", "10", "--rate", "200", "--duration", "1", "--warmup", "0.5"]);
    assert_eq!(rate["mode"], "rate");
    check_delivery(&rate);
    // How late sends went against their schedule, and the rate counted by arrival within the
    // second measured: about 200 (the messages of that second, not of the warm-up).
    assert!(rate["schedule_lag_us"]["p99"].is_u64(), "{rate}");
    let delivered = number(&rate, "delivered_msgs_per_s");
    assert!((150.0..=250.0).contains(&delivered), "{rate}");

    let idle = relay.bench(&["--idle", "50"]);
    assert_eq!(idle["connections"], 50, "{idle}");
    assert_eq!(idle["still_open"], 50, "{idle}");
    assert_eq!(idle["errors"], 0, "{idle}");
    assert!(idle["bytes_per_connection"].is_number(), "{idle}");
    // Split into heap and mapped files, which make up the whole (a part that shrank counts as
    // 0, so the parts may add up to more; each is rounded).
    let parts = number(&idle, "anonymous_bytes_per_connection")
        + number(&idle, "file_bytes_per_connection");
    assert!(parts + 2.0 >= number(&idle, "bytes_per_connection"), "{idle}");
    // Each user first catches up a backlog of 150 messages (about 80 KB: more than the relay
    // pushes before the bench acknowledges).
    let backlog = relay.bench(&["--idle", "20", "--backlog", "150"]);
    assert_eq!(backlog["still_open"], 20, "{backlog}");
    assert_eq!(backlog["errors"], 0, "{backlog}");
    assert_eq!(backlog["backlog_delivered"], 3000, "{backlog}");
    assert!(number(&backlog, "backlog_s") > 0.0, "{backlog}");
    let anonymous = relay.bench(&["--idle", "50", "--anonymous"]);
    assert_eq!(anonymous["mode"], "idle-anonymous");
    assert_eq!(anonymous["connections"], 50, "{anonymous}");
    assert_eq!(anonymous["still_open"], 50, "{anonymous}");
}

#[test]
fn refused_sends_are_reported_not_counted_lost() {
    // Default limits: 50 messages a second per pair (burst 200), far below what the bench sends.
    let relay = RelayProcess::start(true);
    let result =
        relay.bench(&["--pairs", "2", "--window", "64", "--duration", "1", "--warmup", "0"]);
    assert!(number(&result, "errors") > 0.0, "{result}");
    assert!(result["error_kinds"]["send: rate_limited"].as_u64().unwrap_or(0) > 0, "{result}");
    assert_eq!(result["total_sent"], result["total_received"], "{result}");
    assert_eq!(number(&result, "lost"), 0.0, "{result}");
}
