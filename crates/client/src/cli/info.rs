//! `oneiro info`: the daemon's version, device, limits and load.

use anyhow::Result;
use clap::Args;
use oneiro_client::{Client, pb};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print one JSON document instead of the summary.
    #[arg(long)]
    json: bool,
}

pub async fn run(client: &mut Client, a: InfoArgs) -> Result<()> {
    let i = client.info().await?;
    if a.json {
        return super::print_json(&to_json(&i));
    }
    let l = i.limits.unwrap_or_default();
    println!(
        "oneirod {} on {} ({}){}",
        i.version,
        i.device,
        i.dtype,
        if i.auth_required {
            ", token required"
        } else {
            ""
        }
    );
    println!(
        "limits: generate ≤ {} chars, request ≤ {} bytes, corpus ≤ {} bytes, queue {}",
        l.max_generate_length, l.max_request_bytes, l.max_corpus_bytes, l.queue_depth
    );
    println!(
        "now: {} queued, {} training jobs active",
        i.queued, i.active_jobs
    );
    for b in &i.backbones {
        println!(
            "{}: default weights {}, input {}",
            b.network, b.default_weights, b.preprocessing
        );
    }
    Ok(())
}

fn to_json(i: &pb::InfoResponse) -> Value {
    let l = i.limits.unwrap_or_default();
    json!({
        "version": i.version,
        "device": i.device,
        "dtype": i.dtype,
        "auth_required": i.auth_required,
        "limits": {
            "max_generate_length": l.max_generate_length,
            "max_request_bytes": l.max_request_bytes,
            "max_corpus_bytes": l.max_corpus_bytes,
            "queue_depth": l.queue_depth,
            "max_image_pixels": l.max_image_pixels,
        },
        "queued": i.queued,
        "active_jobs": i.active_jobs,
        "resident_models": i.resident_models,
        "resident_bytes": i.resident_bytes,
        "memory_budget_bytes": i.memory_budget_bytes,
        "open_streams": i.open_streams,
        "max_streams": i.max_streams,
        "backbones": i.backbones.iter().map(|b| json!({
            "network": b.network,
            "default_weights": b.default_weights,
            "preprocessing": b.preprocessing,
        })).collect::<Vec<_>>(),
    })
}
