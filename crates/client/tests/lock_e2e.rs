//! One engine per state directory, with real processes: `oneirod` holds the directory's
//! lock; the `oneiro` CLI on that directory talks to it instead of opening a second
//! engine; a second `oneirod` is refused naming the first; a SIGKILLed daemon leaves no
//! stale lock behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// `oneirod`, built beside this package's `oneiro` (a workspace build has it already).
fn oneirod() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_oneiro"))
        .with_file_name(format!("oneirod{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "oneiro-daemon", "--bin", "oneirod"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building oneirod failed");
    }
    path
}

fn daemon_command(state: &Path) -> Command {
    let mut c = Command::new(oneirod());
    c.args(["--listen", "127.0.0.1:0", "--device", "cpu"])
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "info")
        .env_remove("ONEIRO_ENDPOINT");
    c
}

struct Daemon {
    child: Child,
    endpoint: String,
}

impl Daemon {
    fn start(state: &Path) -> Daemon {
        let mut child = daemon_command(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("oneirod starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("oneirod prints its address").unwrap();
            if let Some(rest) = line.split("addr=").nth(1)
                && line.contains("serving")
            {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Daemon {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    /// SIGKILL: no shutdown path runs, the kernel alone releases the lock.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oneiro(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oneiro"))
        .arg("--state-dir")
        .arg(state)
        .args(["--device", "cpu"])
        .args(args)
        .env_remove("ONEIRO_ENDPOINT")
        .env_remove("ONEIRO_TOKEN")
        .env_remove("ONEIRO_TOKEN_FILE")
        .env("ONEIRO_OFFLINE", "true")
        .output()
        .expect("oneiro runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn one_engine_per_state_directory() {
    let state = tempfile::tempdir().unwrap();
    let first = Daemon::start(state.path());

    // The CLI finds the daemon through the lock and talks to it.
    let out = oneiro(state.path(), &["models", "list", "--json"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("served by oneirod at {}", first.endpoint)),
        "{stderr}"
    );

    // A second daemon on the directory is refused, naming the first.
    let second = daemon_command(state.path()).output().expect("oneirod runs");
    let err = text(&second.stderr) + &text(&second.stdout);
    assert!(!second.status.success(), "a second daemon started: {err}");
    assert!(
        err.contains(&format!("in use by oneirod (pid {})", first.child.id()))
            && err.contains(&first.endpoint),
        "{err}"
    );

    // SIGKILL leaves no stale lock: a new daemon takes the directory over at once, and
    // the CLI follows it to its new address.
    first.kill();
    let third = Daemon::start(state.path());
    let out = oneiro(state.path(), &["info"]);
    assert!(
        text(&out.stderr).contains(&third.endpoint),
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success());
    third.kill();

    // With no daemon left, the CLI runs its own engine (and says nothing about one).
    let out = oneiro(state.path(), &["models", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("oneirod"),
        "{}",
        text(&out.stderr)
    );
}
