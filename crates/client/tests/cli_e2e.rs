//! End to end through the real `oneiro` binary: each command starts the engine in-process
//! over one temporary state directory, as a user's would, and the test reads what the
//! command prints.
//!
//! It lives here rather than in the workspace's `tests/` package because only this
//! package's tests get Cargo to build the binary and hand them its path.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const SENTENCE: &str = "the quick brown fox jumps over the lazy dog. ";

/// Runs `oneiro` on the CPU engine over `state`; panics with its output unless it
/// succeeds.
fn oneiro(state: &Path, args: &[&str]) -> String {
    let out = run(state, args);
    assert!(
        out.status.success(),
        "oneiro {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

fn run(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oneiro"))
        .arg("--state-dir")
        .arg(state)
        .args(["--device", "cpu"])
        .args(args)
        // Nothing from the environment may point the command elsewhere or online.
        .env_remove("ONEIRO_ENDPOINT")
        .env_remove("ONEIRO_TOKEN")
        .env_remove("ONEIRO_TOKEN_FILE")
        .env("ONEIRO_OFFLINE", "true")
        .output()
        .expect("the oneiro binary runs")
}

fn json(state: &Path, args: &[&str]) -> Value {
    let out = oneiro(state, args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("oneiro {args:?} printed no JSON document ({e}):\n{out}"))
}

#[test]
fn models_of_a_trained_text_model_are_listed_described_as_json_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, SENTENCE.repeat(30)).unwrap();

    oneiro(
        &state,
        &[
            "text",
            "train",
            "--model",
            "tiny",
            "--corpus",
            corpus.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--validation-split",
            "0.1",
            "--maxlen",
            "16",
            "--step",
            "1",
            "--hidden",
            "32",
            "--seed",
            "7",
            "--no-samples",
        ],
    );

    let list = json(&state, &["models", "list", "--json"]);
    let models = list["models"].as_array().expect("a models array");
    assert_eq!(models.len(), 1, "{list}");
    let m = &models[0];
    assert_eq!(m["name"], "tiny");
    assert_eq!(m["kind"], "char_lstm");
    assert_eq!(m["epochs_trained"], 1);
    assert_eq!(m["config"]["maxlen"], 16);
    assert_eq!(m["config"]["hidden"], 32);
    assert_eq!(m["vocab_size"].as_u64(), Some(28), "{m}"); // 26 letters, space, full stop
    assert_eq!(m["loss_history"].as_array().map(Vec::len), Some(1));
    // The `text` spelling is the same command.
    assert_eq!(json(&state, &["text", "list", "--json"]), list);

    let table = oneiro(&state, &["models", "list"]);
    assert!(
        table.contains("tiny") && table.contains("char_lstm"),
        "{table}"
    );

    let summary = oneiro(&state, &["models", "describe", "tiny"]);
    assert!(!summary.contains("ModelInfo {"), "a debug dump:\n{summary}");
    for line in [
        "name: tiny",
        "kind: char_lstm",
        "  maxlen: 16",
        "  hidden: 32",
        "vocabulary: 28 characters",
        "epochs trained: 1",
        "  epoch 1: ",
        "validation ",
        "last checkpoint: 20",
    ] {
        assert!(summary.contains(line), "no {line:?} in:\n{summary}");
    }
    assert_eq!(oneiro(&state, &["text", "describe", "tiny"]), summary);

    let described = json(&state, &["models", "describe", "tiny", "--json"]);
    assert_eq!(&described, m);

    let info = json(&state, &["info", "--json"]);
    assert_eq!(info["device"], "cpu", "{info}");
    assert!(
        info["limits"]["max_generate_length"].as_u64().is_some(),
        "{info}"
    );

    let jobs = json(&state, &["jobs", "list", "--json"]);
    let jobs = jobs["jobs"].as_array().expect("a jobs array");
    for j in jobs {
        assert!(j["state"].is_string() && j["job_id"].is_string(), "{j}");
    }
    // Jobs are kept in the state directory, so the training's shows up.
    assert!(
        jobs.iter()
            .any(|j| j["model"] == "tiny" && j["state"] == "finished"),
        "{jobs:?}"
    );

    assert_eq!(
        oneiro(&state, &["models", "delete", "tiny"]).trim(),
        "deleted tiny"
    );
    let after = json(&state, &["models", "list", "--json"]);
    assert_eq!(after["models"], Value::Array(vec![]));
    assert!(
        !run(&state, &["models", "describe", "tiny"])
            .status
            .success()
    );
}
