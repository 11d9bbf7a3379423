//! `oneiro models ...` (also spelled `oneiro text ...`): the stored models of every kind.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use clap::Subcommand;
use oneiro_client::{Client, pb};
use serde_json::{Value, json};

use super::{enum_name, json_f32, print_json};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the models (text, VAE and GAN).
    List {
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show one model: kind, configuration, training so far, latest losses.
    Describe {
        name: String,
        /// Print one JSON document instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Delete a model and its checkpoints.
    Delete { name: String },
    /// Load a model onto the daemon's device ahead of use (models stay resident anyway).
    Load { name: String },
    /// Free a model's device memory.
    Unload { name: String },
}

/// Epochs of loss history `describe` shows; the JSON has all of them.
const RECENT_EPOCHS: usize = 5;

pub async fn run(client: &mut Client, cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List { json } => {
            let models = client.list_models().await?;
            if json {
                return print_json(&json!({
                    "models": models.iter().map(to_json).collect::<Vec<_>>()
                }));
            }
            if models.is_empty() {
                println!(
                    "no models yet: `oneiro text train --model NAME` (or `vae train`, `gan train`) creates one"
                );
            }
            for m in &models {
                println!("{}", list_line(m));
            }
            Ok(())
        }
        ModelsCommand::Describe { name, json } => {
            let m = client.describe_model(&name).await?;
            if json {
                print_json(&to_json(&m))
            } else {
                print!("{}", summary(&m));
                Ok(())
            }
        }
        ModelsCommand::Load { name } => {
            let r = client.load_model(&name).await?;
            println!(
                "{name} loaded; resident: {} ({} of {} bytes)",
                r.resident_models.join(", "),
                r.resident_bytes,
                r.memory_budget_bytes
            );
            Ok(())
        }
        ModelsCommand::Unload { name } => {
            let r = client.unload_model(&name).await?;
            println!(
                "{name} {}; resident: {}",
                if r.was_resident {
                    "unloaded"
                } else {
                    "was not loaded"
                },
                r.resident_models.join(", ")
            );
            Ok(())
        }
        ModelsCommand::Delete { name } => {
            client.delete_model(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

fn kind(m: &pb::ModelInfo) -> pb::ModelKind {
    pb::ModelKind::try_from(m.kind).unwrap_or_default()
}

fn kind_name(m: &pb::ModelInfo) -> String {
    model_kind_name(m.kind)
}

/// "char_lstm", "vae", "gan"; empty for a kind this client does not know.
pub(super) fn model_kind_name(kind: i32) -> String {
    pb::ModelKind::try_from(kind)
        .ok()
        .filter(|k| *k != pb::ModelKind::Unspecified)
        .map(|k| enum_name(k.as_str_name(), "MODEL_KIND_"))
        .unwrap_or_default()
}

/// How far training got: GANs count adversarial steps, the others epochs.
fn trained(m: &pb::ModelInfo) -> String {
    match kind(m) {
        pb::ModelKind::Gan => format!("steps {}", m.steps_trained),
        _ => format!("epochs {}", m.epochs_trained),
    }
}

fn list_line(m: &pb::ModelInfo) -> String {
    let loss = m
        .loss_history
        .last()
        .map_or("-".to_string(), |l| format!("{l:.4}"));
    let vocab = match kind(m) {
        pb::ModelKind::CharLstm => format!("  vocab {}", m.vocab_size),
        _ => String::new(),
    };
    format!(
        "{:<24} {:<9} {:<13} loss {:>8}  params {}{vocab}",
        m.name,
        kind_name(m),
        trained(m),
        loss,
        m.parameters
    )
}

/// The configuration in the proto's field order; unset optional fields (the daemon's
/// default) are null.
fn config_fields(m: &pb::ModelInfo) -> Vec<(&'static str, Value)> {
    use pb::model_info::Config;
    let opt = |v: Option<f32>| v.map_or(Value::Null, json_f32);
    match &m.config {
        Some(Config::CharLstm(c)) => vec![
            ("maxlen", c.maxlen.into()),
            ("step", c.step.into()),
            ("hidden", c.hidden.into()),
            ("lowercase", c.lowercase.into()),
        ],
        Some(Config::Vae(c)) => vec![
            ("latent_dim", c.latent_dim.into()),
            ("kl_weight", opt(c.kl_weight)),
        ],
        Some(Config::Gan(c)) => vec![
            ("latent_dim", c.latent_dim.into()),
            ("dropout", opt(c.dropout)),
            ("leaky_slope", opt(c.leaky_slope)),
            ("generator_seed_channels", c.generator_seed_channels.into()),
            ("generator_channels", c.generator_channels.into()),
            ("discriminator_channels", c.discriminator_channels.into()),
        ],
        None => vec![],
    }
}

fn to_json(m: &pb::ModelInfo) -> Value {
    let config = match &m.config {
        Some(_) => Value::Object(
            config_fields(m)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ),
        None => Value::Null,
    };
    let losses = |h: &[f32]| h.iter().copied().map(json_f32).collect::<Vec<_>>();
    json!({
        "name": m.name,
        "kind": kind_name(m),
        "config": config,
        "parameters": m.parameters,
        "epochs_trained": m.epochs_trained,
        "steps_trained": m.steps_trained,
        "vocab_size": m.vocab_size,
        "classes_with_means": m.classes_with_means,
        "loss_history": losses(&m.loss_history),
        "val_loss_history": losses(&m.val_loss_history),
        "updated_unix": m.updated_unix,
    })
}

/// `describe`'s text: one `field: value` per line, the kind's own figures only.
fn summary(m: &pb::ModelInfo) -> String {
    let mut out = format!("name: {}\nkind: {}\n", m.name, kind_name(m));
    let config = config_fields(m);
    if !config.is_empty() {
        out.push_str("config:\n");
        for (k, v) in config {
            let v = match v {
                Value::Null => "default".to_string(),
                v => v.to_string(),
            };
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    let untrained = |n: u64| if n == 0 { " (untrained)" } else { "" };
    out.push_str(&format!(
        "parameters: {}{}\n",
        m.parameters,
        untrained(m.parameters)
    ));
    match kind(m) {
        pb::ModelKind::CharLstm => {
            out.push_str(&format!("vocabulary: {} characters\n", m.vocab_size));
        }
        pb::ModelKind::Vae => {
            out.push_str(&format!(
                "digit classes with a mean code: {}\n",
                m.classes_with_means
            ));
        }
        _ => {}
    }
    match kind(m) {
        pb::ModelKind::Gan => out.push_str(&format!("steps trained: {}\n", m.steps_trained)),
        _ => out.push_str(&format!("epochs trained: {}\n", m.epochs_trained)),
    }
    let n = m.loss_history.len();
    if n > 0 {
        let first = n.saturating_sub(RECENT_EPOCHS);
        out.push_str(&format!("losses (last {} of {n} epochs):\n", n - first));
        // Validation losses exist only for the epochs trained with a split, so they line
        // up with the epochs only when every epoch had one.
        let aligned = m.val_loss_history.len() == n;
        for (i, loss) in m.loss_history.iter().enumerate().skip(first) {
            let val = match m.val_loss_history.get(i) {
                Some(v) if aligned => format!("  validation {v:.4}"),
                _ => String::new(),
            };
            out.push_str(&format!("  epoch {}: {loss:.4}{val}\n", i + 1));
        }
        if !aligned && !m.val_loss_history.is_empty() {
            let recent: Vec<String> = m.val_loss_history
                [m.val_loss_history.len().saturating_sub(RECENT_EPOCHS)..]
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect();
            out.push_str(&format!(
                "validation losses (last {} of {}, epochs with a split): {}\n",
                recent.len(),
                m.val_loss_history.len(),
                recent.join(" ")
            ));
        }
    }
    out.push_str(&format!(
        "last checkpoint: {}\n",
        checkpoint_time(m.updated_unix)
    ));
    out
}

fn checkpoint_time(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(s) if s > 0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        _ => "none".to_string(),
    }
}
