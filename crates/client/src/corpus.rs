//! The book's default corpus, fetched once into a cache directory.

use std::path::{Path, PathBuf};

pub const NIETZSCHE_URL: &str = "https://s3.amazonaws.com/text-datasets/nietzsche.txt";

/// `$ONEIRO_HOME/cache`, else the per-user cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("ONEIRO_HOME") {
        return PathBuf::from(home).join("cache");
    }
    directories::ProjectDirs::from("", "", "oneiro")
        .map(|d| d.cache_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".oneiro-cache"))
}

/// The Nietzsche corpus: from the cache, or downloaded into it (unless `offline`).
pub fn nietzsche(cache: &Path, offline: bool) -> anyhow::Result<PathBuf> {
    let path = cache.join("nietzsche.txt");
    if path.is_file() {
        return Ok(path);
    }
    if offline {
        anyhow::bail!(
            "the default corpus is not in the cache ({}) and downloads are off; pass --corpus FILE",
            path.display()
        );
    }
    std::fs::create_dir_all(cache)?;
    eprintln!("downloading the default corpus from {NIETZSCHE_URL} ...");
    let fetched = (|| -> anyhow::Result<Vec<u8>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build()
            .into();
        let mut resp = agent.get(NIETZSCHE_URL).call()?;
        Ok(resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()?)
    })();
    let bytes = fetched.map_err(|e| {
        anyhow::anyhow!("could not download the default corpus from {NIETZSCHE_URL} ({e}); offline? pass --corpus FILE")
    })?;
    if bytes.is_empty() || std::str::from_utf8(&bytes).is_err() {
        anyhow::bail!("the download from {NIETZSCHE_URL} is not a UTF-8 text; pass --corpus FILE");
    }
    let tmp = cache.join(".nietzsche.txt.part");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_corpus_is_used_without_network() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nietzsche.txt"), "cached").unwrap();
        assert_eq!(
            nietzsche(dir.path(), true).unwrap(),
            dir.path().join("nietzsche.txt")
        );
    }

    #[test]
    fn offline_without_a_cache_asks_for_a_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let err = nietzsche(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("--corpus"), "{err}");
    }
}
