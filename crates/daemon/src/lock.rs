//! One engine per state directory. An engine (`oneirod`, or the CLI's in-process one)
//! holds an OS file lock on `<state dir>/engine.lock` for its whole life and writes who
//! it is into the file: its pid, whether it is a daemon, and where it serves. The kernel
//! drops the lock when the process ends, however it ends, so a SIGKILL never leaves a
//! stale lock; the text left behind is only read while someone holds the lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const LOCK_FILE: &str = "engine.lock";

/// Who holds a state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// `daemon` (`oneirod`) or `embedded` (the CLI's in-process engine).
    pub role: Role,
    /// Where it serves gRPC (`http://127.0.0.1:50051`), once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Daemon,
    Embedded,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Role::Daemon => write!(f, "oneirod (pid {})", self.pid)?,
            Role::Embedded => write!(f, "the in-process engine of `oneiro` (pid {})", self.pid)?,
        }
        if let Some(e) = &self.endpoint {
            write!(f, " serving {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the state directory {} is in use by {holder}: one engine per directory, or their checkpoints overwrite each other{}",
        dir.display(),
        match holder.role {
            Role::Daemon => "; talk to it with --endpoint, or use another --state-dir",
            Role::Embedded => "; wait for that command to finish, or use another --state-dir",
        }
    )]
    Held { dir: PathBuf, holder: Holder },
    /// Locked by a process that has not said who it is yet (it is starting).
    #[error(
        "the state directory {} is locked by another process that is starting up; retry in a moment",
        .0.display()
    )]
    Starting(PathBuf),
    #[error("cannot lock the state directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The lock on a state directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    holder: Holder,
    dir: PathBuf,
}

impl StateLock {
    /// Takes the lock of `dir` (created if missing) for this process, or says who has it.
    pub fn acquire(dir: &Path, role: Role) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(match read_holder(&mut file) {
                    Some(holder) => LockError::Held {
                        dir: dir.to_path_buf(),
                        holder,
                    },
                    None => LockError::Starting(dir.to_path_buf()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut lock = Self {
            file,
            holder: Holder {
                pid: std::process::id(),
                role,
                endpoint: None,
            },
            dir: dir.to_path_buf(),
        };
        lock.write().map_err(io)?;
        Ok(lock)
    }

    /// Records where this engine serves, for the CLI to find it.
    pub fn serving(&mut self, addr: SocketAddr, tls: bool) -> std::io::Result<()> {
        self.holder.endpoint = Some(endpoint_of(addr, tls));
        self.write()
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&mut self) -> std::io::Result<()> {
        let text = serde_json::to_string(&self.holder).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }
}

/// Who holds `dir`'s lock now, if anyone (a daemon to talk to, or an engine to wait for).
pub fn holder_of(dir: &Path) -> Option<Holder> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: what the file says is history.
        Ok(()) => None,
        Err(_) => read_holder(&mut file),
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The address a local client dials: a daemon listening on every interface is reached
/// on loopback.
fn endpoint_of(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_engine_is_refused_naming_the_first_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder_of(dir.path()), None);
        let mut first = StateLock::acquire(dir.path(), Role::Daemon).unwrap();
        first.serving(([0, 0, 0, 0], 50051).into(), false).unwrap();
        let holder = holder_of(dir.path()).expect("held");
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.endpoint.as_deref(), Some("http://127.0.0.1:50051"));

        // flock conflicts between open files even within one process.
        let err = StateLock::acquire(dir.path(), Role::Embedded).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("oneirod (pid {})", std::process::id()))
                && msg.contains("http://127.0.0.1:50051")
                && msg.contains("--endpoint"),
            "{msg}"
        );
        drop(first);
        // Released: the text left in the file names nobody.
        assert_eq!(holder_of(dir.path()), None);
        let second = StateLock::acquire(dir.path(), Role::Embedded).unwrap();
        let err = StateLock::acquire(dir.path(), Role::Daemon).unwrap_err();
        assert!(err.to_string().contains("in-process engine"), "{err}");
        assert_eq!(second.holder().role, Role::Embedded);
    }
}
