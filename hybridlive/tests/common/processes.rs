//! The binary as a process of a test: on the test's database with the lite read models,
//! started until it logs that it is ready, its stderr kept line by line.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `hybridlive <args>` on `db`, with the lite read models (the production stores' variables
/// of the test environment removed), `/metrics` on a free port, stderr piped.
pub fn hybridlive(db: &TestDb, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hybridlive"));
    for variable in testkit::PRODUCTION_STORE_VARIABLES {
        command.env_remove(variable);
    }
    command
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("KEY_ENCRYPTION_KEY", testkit::TEST_KEY_ENCRYPTION_KEY)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn,hybridlive=info,projections=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running process (killed when dropped) and what it has written on stderr so far.
pub struct Process {
    pub child: Child,
    /// The address on the line it was waited for (`127.0.0.1:<port>`), if that line held one.
    pub addr: Option<String>,
    pub lines: Arc<Mutex<Vec<String>>>,
}

/// Starts `command` and waits (60 s at most) for the stderr line containing `marker`. The
/// process's later lines are kept, and passed on to the test's stderr.
pub async fn spawn_until(command: &mut Command, marker: &str) -> Process {
    let mut child = command.spawn().expect("the hybridlive binary runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{marker}` within 60 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("exited before `{marker}`"));
        if line.contains(marker) {
            break line;
        }
    };
    let addr = line.split_once("127.0.0.1:").map(|(_, after)| {
        let port: String = after.chars().take_while(char::is_ascii_digit).collect();
        format!("127.0.0.1:{port}")
    });
    let kept = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&kept);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            keep.lock().unwrap().push(line);
        }
    });
    Process {
        child,
        addr,
        lines: kept,
    }
}

/// [`spawn_until`], for a marker line that logs the address the process serves on (port
/// 0 picks a free one): the process and that address.
pub async fn spawn_at(command: &mut Command, marker: &str) -> (Child, String) {
    let process = spawn_until(command, marker).await;
    let addr = process
        .addr
        .unwrap_or_else(|| panic!("`{marker}` names no 127.0.0.1 address"));
    (process.child, addr)
}
