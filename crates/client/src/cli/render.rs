//! How streamed work looks on a terminal: the training-event renderer every kind of job
//! shares, and the progress helpers of the one-shot image commands.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use oneiro_client::pb;

use super::files;

/// Prints a job's events: progress bar, epoch lines, samples, the outcome. Pictures
/// (the VAE's latent grid) are written under `images` when given.
pub async fn follow(
    mut stream: tonic::Streaming<pb::TrainEvent>,
    detach: bool,
    images: Option<&Path>,
) -> Result<()> {
    let mut bar: Option<ProgressBar> = None;
    let mut total_epochs = 0;
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    use pb::train_event::Event;
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(Event::Accepted(a)) => {
                eprintln!("job {} training {}", ev.job_id, a.model);
                if detach {
                    println!("{}", ev.job_id);
                    return Ok(());
                }
            }
            Some(Event::Started(s)) => {
                total_epochs = s.first_epoch + s.epochs - 1;
                let resumed = if s.first_step > 0 {
                    format!(
                        ", resuming epoch {} at step {}",
                        s.first_epoch, s.first_step
                    )
                } else {
                    String::new()
                };
                // Daemons before the `kind` field sent vocabulary 0 for VAE and GAN.
                let text = match pb::ModelKind::try_from(s.kind) {
                    Ok(pb::ModelKind::Unspecified) | Err(_) => s.vocab_size > 0,
                    Ok(kind) => kind == pb::ModelKind::CharLstm,
                };
                if !text {
                    eprintln!(
                        "training {} on {}: {} images ({} for validation), {} steps per epoch{resumed}",
                        s.model,
                        s.device,
                        s.train_sequences,
                        s.validation_sequences,
                        s.steps_per_epoch
                    );
                } else {
                    eprintln!(
                        "training {} on {}: {} sequences ({} held out), vocabulary {}, {} steps per epoch{resumed}",
                        s.model,
                        s.device,
                        s.train_sequences,
                        s.validation_sequences,
                        s.vocab_size,
                        s.steps_per_epoch
                    );
                }
            }
            Some(Event::Batch(b)) => {
                let p = bar.get_or_insert_with(|| {
                    let p = ProgressBar::new(b.steps_per_epoch as u64).with_style(style.clone());
                    p.set_prefix(format!("{}/{}", b.epoch, total_epochs));
                    p.enable_steady_tick(Duration::from_millis(200));
                    p
                });
                p.set_position(b.step as u64);
                p.set_message(format!(
                    "loss {:.4}  {:.0} seq/s",
                    b.loss, b.sequences_per_second
                ));
            }
            Some(Event::EpochEnd(e)) => {
                if let Some(p) = bar.take() {
                    p.finish_and_clear();
                }
                let mut val = e
                    .val_loss
                    .map(|v| format!("  val_loss {v:.4}"))
                    .unwrap_or_default();
                if let (Some(r), Some(k)) = (e.reconstruction_loss, e.kl_loss) {
                    val.push_str(&format!("  (reconstruction {r:.4} + KL {k:.5}"));
                    if let (Some(vr), Some(vk)) = (e.val_reconstruction_loss, e.val_kl_loss) {
                        val.push_str(&format!("; validation {vr:.4} + {vk:.5}"));
                    }
                    val.push(')');
                }
                println!(
                    "epoch {}/{}  loss {:.4}{}  ({:.1}s)",
                    e.epoch, total_epochs, e.loss, val, e.seconds
                );
            }
            Some(Event::Sample(s)) => {
                println!(
                    "--- temperature {}\n{}{}\n",
                    s.temperature, s.seed_text, s.text
                );
            }
            Some(Event::Gan(g)) => {
                if let Some(p) = bar.take() {
                    p.finish_and_clear();
                }
                println!(
                    "step {:>6}  discriminator loss {:.4} (right {:.0}%)  adversarial loss {:.4}  lr {:.2e}/{:.2e}",
                    g.step,
                    g.discriminator_loss,
                    100.0 * g.discriminator_accuracy,
                    g.adversarial_loss,
                    g.discriminator_lr,
                    g.generator_lr
                );
                if !g.warning.is_empty() {
                    eprintln!("warning: {}", g.warning);
                }
                if let Some(dir) = images {
                    for (what, png) in [("generated", &g.generated_png), ("real", &g.real_png)] {
                        files::write(&dir.join(format!("step{:06}-{what}.png", g.step)), png)?;
                    }
                }
            }
            Some(Event::Image(i)) => match images {
                Some(dir) => {
                    let slug: String = i
                        .caption
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                        .collect();
                    let path = dir.join(format!("epoch{:04}-{slug}.png", i.epoch));
                    files::write(&path, &i.png)?;
                    println!("{}: {}", i.caption, path.display());
                }
                None => {
                    tracing::info!(caption = %i.caption, bytes = i.png.len(), "picture (not saved)")
                }
            },
            Some(Event::Checkpoint(c)) => {
                tracing::info!(checkpoint = %c.checkpoint, step = c.step, "checkpoint written")
            }
            Some(Event::Finished(f)) if f.unit == pb::ProgressUnit::Steps as i32 => {
                println!(
                    "done: {} steps trained, final adversarial loss {:.4} ({:.1}s)",
                    f.units_trained, f.final_loss, f.seconds
                );
            }
            Some(Event::Finished(f)) if f.epochs_trained == 0 => {
                // A GAN job of a daemon before `unit`: its steps were in its progress.
                println!(
                    "done: final adversarial loss {:.4} ({:.1}s)",
                    f.final_loss, f.seconds
                );
            }
            Some(Event::Finished(f)) => {
                println!(
                    "done: {} epochs trained, final loss {:.4} ({:.1}s)",
                    f.epochs_trained, f.final_loss, f.seconds
                );
            }
            Some(Event::Stopped(s)) => {
                if let Some(p) = bar.take() {
                    p.abandon();
                }
                let state = pb::JobState::try_from(s.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("?");
                eprintln!("job {} stopped ({state}): {}", ev.job_id, s.reason);
            }
            None => {}
        }
    }
    Ok(())
}

/// Shows `line` above the progress bar, moved to `position`; on stderr when the bar is
/// hidden (not a terminal).
pub fn progress_line(bar: Option<&ProgressBar>, position: u64, line: String) {
    match bar {
        Some(b) if !b.is_hidden() => {
            b.set_position(position);
            b.println(line);
        }
        _ => eprintln!("{line}"),
    }
}

/// Clears the progress bar and writes the last image a stream sent to `output`.
pub fn finish(
    bar: Option<ProgressBar>,
    last: Option<pb::Image>,
    output: &Path,
    what: &str,
) -> Result<()> {
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let Some(img) = last else {
        bail!("the daemon ended the {what} without an image")
    };
    files::write(output, &img.png)?;
    println!("wrote {} ({}x{})", output.display(), img.width, img.height);
    Ok(())
}
