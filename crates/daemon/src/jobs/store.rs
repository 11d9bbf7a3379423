//! Jobs on disk: `<state>/jobs/<id>/job.json` (written atomically) and the data that
//! came with the request (`corpus.txt`, `data/` digits, `images/`).

use std::path::{Path, PathBuf};

use oneiro_trainer::store::write_atomic;

use super::plan::JobData;
use super::state::JobFile;

/// One job's folder.
#[derive(Clone, Debug)]
pub struct JobDir(PathBuf);

impl JobDir {
    pub fn new(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn corpus_path(&self) -> PathBuf {
        self.0.join("corpus.txt")
    }

    /// Where images that came with a GAN request are kept.
    pub fn images_dir(&self) -> PathBuf {
        self.0.join("images")
    }

    /// Where digits that came with the request are kept (IDX files).
    pub fn data_dir(&self) -> PathBuf {
        self.0.join("data")
    }

    pub fn write(&self, file: &JobFile) -> oneiro_trainer::Result<()> {
        let json = serde_json::to_vec_pretty(file).expect("job files serialize");
        write_atomic(&self.0.join("job.json"), &json)
    }

    pub fn read(&self) -> Result<JobFile, String> {
        let bytes = std::fs::read(self.0.join("job.json")).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// Creates the folder and saves the request's data in it.
    pub fn save_data(&self, data: &JobData) -> oneiro_trainer::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        match data {
            JobData::Corpus(corpus) => write_atomic(&self.corpus_path(), corpus.as_bytes()),
            JobData::Digits(m) => {
                let dir = self.data_dir();
                std::fs::create_dir_all(&dir)?;
                oneiro_trainer::mnist::write_split(&dir, "train", &m.train)?;
                oneiro_trainer::mnist::write_split(&dir, "t10k", &m.test)
            }
            JobData::Images(images) => {
                let dir = self.images_dir();
                std::fs::create_dir_all(&dir)?;
                for (i, bytes) in images.iter().enumerate() {
                    // The extension only has to be one the folder loader reads; the
                    // decoder sniffs the real format.
                    std::fs::write(dir.join(format!("{i:06}.png")), bytes)?;
                }
                Ok(())
            }
            JobData::InPlan => Ok(()),
        }
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The job folders under `dir` (created if missing), with what each `job.json` holds
/// or why it cannot be read.
pub fn scan(dir: &Path) -> std::io::Result<Vec<(JobDir, Result<JobFile, String>)>> {
    std::fs::create_dir_all(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let job = JobDir::new(entry?.path());
        let file = job.read();
        found.push((job, file));
    }
    Ok(found)
}
