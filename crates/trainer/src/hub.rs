//! Files from the Hugging Face hub (datasets and weights), through `hf-hub`'s cache.
//!
//! Offline use: `offline` resolves strictly from the local cache (hf-hub 1.0 does not read
//! `HF_HUB_OFFLINE` itself, so the daemon and the CLI pass it down). The cache is hf-hub's
//! (`HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`) unless one is given.

use std::path::{Path, PathBuf};

use hf_hub::{HFClient, HFClientSync, HFError};

use crate::{Error, Result};

/// Where and how to look for hub files.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HubOptions {
    /// Use only what is cached; never touch the network.
    pub offline: bool,
    /// A cache directory other than hf-hub's default.
    pub cache_dir: Option<PathBuf>,
    /// Branch, tag or commit [main].
    pub revision: Option<String>,
}

impl HubOptions {
    /// `offline` from the conventional environment variable as well.
    pub fn from_env() -> Self {
        let on = |v: &str| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0");
        Self {
            offline: on("HF_HUB_OFFLINE") || on("ONEIRO_OFFLINE"),
            ..Self::default()
        }
    }
}

/// `owner/name` split, with a clear error for anything else.
fn split_repo(repo: &str) -> Result<(&str, &str)> {
    match repo.split_once('/') {
        Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => Ok((o, n)),
        _ => Err(Error::invalid(format!(
            "hub repository {repo:?} is not of the form owner/name"
        ))),
    }
}

/// Local paths of `files` of the dataset repository `repo`, downloading what is missing.
pub fn dataset_files(repo: &str, files: &[&str], opts: &HubOptions) -> Result<Vec<PathBuf>> {
    repo_files(RepoKind::Dataset, repo, files, opts)
}

/// Local paths of `files` of the model repository `repo` (weights), downloading what is
/// missing.
pub fn model_files(repo: &str, files: &[&str], opts: &HubOptions) -> Result<Vec<PathBuf>> {
    repo_files(RepoKind::Model, repo, files, opts)
}

/// The hub's two kinds of repository we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Dataset,
    Model,
}

fn repo_files(
    kind: RepoKind,
    repo: &str,
    files: &[&str],
    opts: &HubOptions,
) -> Result<Vec<PathBuf>> {
    let (owner, name) = split_repo(repo)?;
    let mut builder = HFClient::builder();
    if let Some(dir) = &opts.cache_dir {
        builder = builder.cache_dir(dir);
    }
    let client = builder
        .build()
        .and_then(HFClientSync::from_inner)
        .map_err(|e| Error::Unavailable(format!("cannot set up the hub client: {e}")))?;
    match kind {
        RepoKind::Dataset => fetch(client.dataset(owner, name), repo, files, opts),
        RepoKind::Model => fetch(client.model(owner, name), repo, files, opts),
    }
}

fn fetch<T: hf_hub::RepoType>(
    handle: hf_hub::HFRepositorySync<T>,
    repo: &str,
    files: &[&str],
    opts: &HubOptions,
) -> Result<Vec<PathBuf>> {
    files
        .iter()
        .map(|file| {
            handle
                .download_file()
                .filename(*file)
                .maybe_revision(opts.revision.clone())
                .local_files_only(opts.offline)
                .send()
                .map_err(|e| hub_error(repo, file, opts, e))
        })
        .collect()
}

fn hub_error(repo: &str, file: &str, opts: &HubOptions, e: HFError) -> Error {
    match e {
        HFError::LocalEntryNotFound { .. } => Error::Unavailable(format!(
            "{repo}/{file} is not in the hub cache{} and offline mode is on: download it once online, or give a local copy",
            opts.cache_dir
                .as_deref()
                .map(|d| format!(" ({})", d.display()))
                .unwrap_or_default()
        )),
        HFError::EntryNotFound { .. } | HFError::RepoNotFound { .. } => {
            Error::NotFound(format!("the hub has no {repo}/{file}: {e}"))
        }
        other => Error::Unavailable(format!("cannot fetch {repo}/{file} from the hub: {other}")),
    }
}

/// Lays out `files` (name → bytes) as a cached snapshot of dataset `repo` under `cache`,
/// exactly where hf-hub looks for them: how tests and air-gapped machines seed a cache.
pub fn seed_cache(cache: &Path, repo: &str, files: &[(&str, &[u8])]) -> Result<()> {
    seed_repo_cache(cache, RepoKind::Dataset, repo, files)
}

/// [`seed_cache`] for either kind of repository.
pub fn seed_repo_cache(
    cache: &Path,
    kind: RepoKind,
    repo: &str,
    files: &[(&str, &[u8])],
) -> Result<()> {
    let (owner, name) = split_repo(repo)?;
    let commit = "0000000000000000000000000000000000000001";
    let prefix = match kind {
        RepoKind::Dataset => "datasets",
        RepoKind::Model => "models",
    };
    let root = cache.join(format!("{prefix}--{owner}--{name}"));
    std::fs::create_dir_all(root.join("refs"))?;
    std::fs::write(root.join("refs/main"), commit)?;
    for (file, bytes) in files {
        let path = root.join("snapshots").join(commit).join(file);
        std::fs::create_dir_all(path.parent().expect("file in a directory"))?;
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_reads_the_cache_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        seed_cache(dir.path(), "someone/data", &[("sub/a.bin", b"abc")]).unwrap();
        let opts = HubOptions {
            offline: true,
            cache_dir: Some(dir.path().to_path_buf()),
            revision: None,
        };
        let p = dataset_files("someone/data", &["sub/a.bin"], &opts).unwrap();
        assert_eq!(std::fs::read(&p[0]).unwrap(), b"abc");
        let e = dataset_files("someone/data", &["sub/b.bin"], &opts).unwrap_err();
        assert!(
            matches!(e, Error::Unavailable(_)) && e.to_string().contains("someone/data/sub/b.bin"),
            "{e}"
        );
        assert!(dataset_files("no-slash", &["x"], &opts).is_err());
    }
}
