//! `oneiro jobs ...`: the daemon's training jobs, whatever the model kind.

use anyhow::Result;
use clap::Subcommand;
use oneiro_client::{Client, pb};
use serde_json::{Value, json};

use super::models::model_kind_name;
use super::render::follow;
use super::{enum_name, json_f32, print_json};

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Jobs with their state, progress and latest loss.
    List {
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job (its recent events first).
    Watch { job_id: String },
    /// Stop a job at its next step (a checkpoint is written first).
    Cancel { job_id: String },
    /// Continue an interrupted, cancelled or failed job from its last checkpoint.
    Resume {
        job_id: String,
        /// Print the job id and return instead of following it.
        #[arg(long)]
        detach: bool,
    },
}

pub async fn run(client: &mut Client, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::List { json } => {
            let jobs = client.list_jobs().await?;
            if json {
                return print_json(&json!({
                    "jobs": jobs.iter().map(to_json).collect::<Vec<_>>()
                }));
            }
            if jobs.is_empty() {
                println!("no jobs");
            }
            for j in jobs {
                let loss = j.last_loss.map_or("-".into(), |l| format!("{l:.4}"));
                println!(
                    "{}  {:<12} {:<9} {:<20} epoch {}/{} step {}/{}  loss {}  {}",
                    j.job_id,
                    state_name(j.state),
                    model_kind_name(j.kind),
                    j.model,
                    j.epoch,
                    j.target_epoch,
                    j.step,
                    j.steps_per_epoch,
                    loss,
                    j.message
                );
            }
            Ok(())
        }
        JobsCommand::Watch { job_id } => {
            follow(client.watch_job(&job_id).await?, false, None).await
        }
        JobsCommand::Cancel { job_id } => {
            let j = client.cancel_job(&job_id).await?;
            println!(
                "cancelling {} (stops at its next step, after a checkpoint)",
                j.job_id
            );
            Ok(())
        }
        JobsCommand::Resume { job_id, detach } => {
            follow(client.resume_job(&job_id).await?, detach, None).await
        }
    }
}

/// "running", "interrupted", ...; empty for a state this client does not know.
fn state_name(state: i32) -> String {
    pb::JobState::try_from(state)
        .map(|s| enum_name(s.as_str_name(), "JOB_STATE_"))
        .unwrap_or_default()
}

/// "epochs", "steps"; empty from a daemon that does not say.
fn unit_name(unit: i32) -> String {
    pb::ProgressUnit::try_from(unit)
        .ok()
        .filter(|u| *u != pb::ProgressUnit::Unspecified)
        .map(|u| enum_name(u.as_str_name(), "PROGRESS_UNIT_"))
        .unwrap_or_default()
}

fn to_json(j: &pb::JobInfo) -> Value {
    json!({
        "job_id": j.job_id,
        "model": j.model,
        "kind": model_kind_name(j.kind),
        "unit": unit_name(j.unit),
        "state": state_name(j.state),
        "epoch": j.epoch,
        "target_epoch": j.target_epoch,
        "step": j.step,
        "steps_per_epoch": j.steps_per_epoch,
        "last_loss": j.last_loss.map(json_f32),
        "sequences_per_second": json_f32(j.sequences_per_second),
        "message": j.message,
        "created_unix": j.created_unix,
        "updated_unix": j.updated_unix,
    })
}
