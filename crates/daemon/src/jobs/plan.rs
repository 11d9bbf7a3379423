//! What a job trains, as saved in its `job.json`, and the data that came with its
//! request.

use std::sync::Arc;

use oneiro_trainer::ModelKind;
use oneiro_trainer::cifar::ImageSource;
use oneiro_trainer::gan::GanTrainOptions;
use oneiro_trainer::mnist::{Mnist, MnistSource};
use oneiro_trainer::text::TextTrainOptions;
use oneiro_trainer::vae::VaeTrainOptions;
use serde::{Deserialize, Serialize};

/// What a job trains, with which settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Untagged so that job files written before the VAE existed (bare text options) still read.
#[serde(untagged)]
pub enum TrainPlan {
    /// The GAN; `images: None` means the images saved in the job's `images/` directory.
    /// Its progress is counted in steps.
    Gan {
        gan: GanTrainOptions,
        images: Option<ImageSource>,
    },
    /// The VAE; `data: None` means the digits saved in the job's own `data/` directory.
    Vae {
        vae: VaeTrainOptions,
        data: Option<MnistSource>,
    },
    /// The character model, on the job's `corpus.txt`.
    Text(TextTrainOptions),
}

impl TrainPlan {
    /// How much the plan trains, in its unit (epochs, or steps for the GAN).
    pub fn units(&self) -> u32 {
        match self {
            Self::Gan { gan, .. } => gan.steps,
            Self::Vae { vae, .. } => vae.epochs,
            Self::Text(t) => t.epochs,
        }
    }

    pub fn set_units(&mut self, units: u32) {
        match self {
            Self::Gan { gan, .. } => gan.steps = units,
            Self::Vae { vae, .. } => vae.epochs = units,
            Self::Text(t) => t.epochs = units,
        }
    }

    /// The kind of model the plan trains (which says the unit of [`Self::units`]).
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Gan { .. } => ModelKind::Gan,
            Self::Vae { .. } => ModelKind::Vae,
            Self::Text(_) => ModelKind::CharLstm,
        }
    }
}

/// What a job trains on, saved next to it when it came with the request.
pub enum JobData {
    Corpus(Arc<String>),
    Digits(Arc<Mnist>),
    /// Encoded images, saved as files.
    Images(Vec<Vec<u8>>),
    /// Named by the plan (a hub dataset, a directory of the daemon's).
    InPlan,
}
