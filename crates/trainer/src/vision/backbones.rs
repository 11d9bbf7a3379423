//! Which pretrained network to load and from where: the hub (timm's checkpoints, cached,
//! offline-capable), a local safetensors file, or a seeded random network.

use std::path::PathBuf;

use oneiro_models::{Preprocessing, Weights};

use crate::hub::{HubOptions, model_files};
use crate::{Error, Result};

/// The two pretrained feature extractors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    InceptionV3,
    Vgg19,
}

impl Network {
    pub fn name(self) -> &'static str {
        match self {
            Self::InceptionV3 => "InceptionV3",
            Self::Vgg19 => "VGG19",
        }
    }

    /// The hub checkpoint used unless another is asked for (see SPEC: TensorFlow-slim's
    /// InceptionV3 weights, as Keras had; torchvision's VGG19, the hub's only one).
    pub fn default_repo(self) -> &'static str {
        match self {
            Self::InceptionV3 => "timm/inception_v3.tf_in1k",
            Self::Vgg19 => "timm/vgg19.tv_in1k",
        }
    }

    /// The input scaling weights from `origin` (a repository or file name) were trained
    /// with: TensorFlow-slim InceptionV3 (`tf_in1k`) wants [-1, 1]; torchvision's
    /// (`tv_in1k`) want ImageNet normalisation; a Caffe/Keras VGG wants BGR minus means.
    pub fn preprocessing_for(self, origin: &str) -> Preprocessing {
        let o = origin.to_ascii_lowercase();
        match self {
            Self::InceptionV3 if o.contains("tv_in1k") || o.contains("torchvision") => {
                Preprocessing::Imagenet
            }
            Self::InceptionV3 => Preprocessing::Inception,
            Self::Vgg19 if o.contains("caffe") || o.contains("keras") => Preprocessing::Caffe,
            Self::Vgg19 => Preprocessing::Imagenet,
        }
    }
}

/// Where the user wants the weights from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsSpec {
    /// A hub repository holding `model.safetensors` (`None`: the network's default).
    Hub(Option<String>),
    /// A safetensors file on this machine.
    File(PathBuf),
    /// A seeded random network (not pretrained).
    Random(u64),
}

/// Weights ready to load, with what a user should be told about them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedWeights {
    pub network: Network,
    pub weights: Weights,
    pub preprocessing: Preprocessing,
    /// `timm/inception_v3.tf_in1k`, a file name, or `random (seed 7)`.
    pub origin: String,
}

impl ResolvedWeights {
    /// One line for users; says plainly when the network is not pretrained.
    pub fn describe(&self) -> String {
        let what = if self.weights.is_pretrained() {
            format!("{} weights from {}", self.network.name(), self.origin)
        } else {
            format!(
                "{} with {} weights: NOT pretrained, the results show the pipeline, not what a trained network sees",
                self.network.name(),
                self.origin
            )
        };
        format!("{what}; input: {}", self.preprocessing.describe())
    }

    /// A key that identifies the loaded network (for keeping it resident).
    pub fn cache_key(&self) -> String {
        match &self.weights {
            Weights::File(p) => format!(
                "{:?}:{}:{}",
                self.network,
                p.display(),
                self.preprocessing.name()
            ),
            Weights::Seeded(s) => {
                format!("{:?}:seed{s}:{}", self.network, self.preprocessing.name())
            }
        }
    }
}

/// Finds (downloading if needed) the weights `spec` names; `preprocessing` overrides the
/// one the weights imply.
pub fn resolve(
    network: Network,
    spec: &WeightsSpec,
    preprocessing: Option<Preprocessing>,
    hub: &HubOptions,
) -> Result<ResolvedWeights> {
    let (weights, origin) = match spec {
        WeightsSpec::Hub(repo) => {
            let repo = repo.as_deref().unwrap_or(network.default_repo());
            let path = model_files(repo, &["model.safetensors"], hub)?
                .pop()
                .expect("one file asked");
            (Weights::File(path), repo.to_string())
        }
        WeightsSpec::File(path) => {
            if !path.is_file() {
                return Err(Error::NotFound(format!(
                    "weights file {} does not exist",
                    path.display()
                )));
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            (Weights::File(path.clone()), name.unwrap_or_default())
        }
        WeightsSpec::Random(seed) => (Weights::Seeded(*seed), format!("random (seed {seed})")),
    };
    Ok(ResolvedWeights {
        network,
        preprocessing: preprocessing.unwrap_or_else(|| network.preprocessing_for(&origin)),
        weights,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{RepoKind, seed_repo_cache};

    #[test]
    fn hub_weights_resolve_from_the_cache_offline_and_imply_their_preprocessing() {
        let dir = tempfile::tempdir().unwrap();
        seed_repo_cache(
            dir.path(),
            RepoKind::Model,
            "timm/inception_v3.tf_in1k",
            &[("model.safetensors", b"x")],
        )
        .unwrap();
        let hub = HubOptions {
            offline: true,
            cache_dir: Some(dir.path().to_path_buf()),
            revision: None,
        };
        let r = resolve(Network::InceptionV3, &WeightsSpec::Hub(None), None, &hub).unwrap();
        assert_eq!(r.preprocessing, Preprocessing::Inception);
        assert!(r.describe().contains("timm/inception_v3.tf_in1k"));
        let e = resolve(Network::Vgg19, &WeightsSpec::Hub(None), None, &hub).unwrap_err();
        assert!(e.to_string().contains("timm/vgg19.tv_in1k"), "{e}");
        let r = resolve(Network::Vgg19, &WeightsSpec::Random(3), None, &hub).unwrap();
        assert!(r.describe().contains("NOT pretrained"), "{}", r.describe());
        assert_eq!(r.preprocessing, Preprocessing::Imagenet);
        assert_eq!(
            Network::InceptionV3.preprocessing_for("timm/inception_v3.tv_in1k"),
            Preprocessing::Imagenet
        );
        let e = resolve(
            Network::Vgg19,
            &WeightsSpec::File(dir.path().join("missing.safetensors")),
            None,
            &hub,
        )
        .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
    }
}
