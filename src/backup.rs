//! The durable record of users' original Jellyfin limits, so they can be put back on exit, on
//! `restore`, and after a crash at the next start. Written to flash only when it changes, and
//! always atomically (temp + fsync + rename): a power cut leaves the old file or the new one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "original-limits.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The user's name when the backup was taken, for messages only.
    pub name: String,
    /// `RemoteClientBitrateLimit` before the daemon first changed it (b/s; 0 = none).
    pub original: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    users: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub struct Backup {
    path: PathBuf,
    users: BTreeMap<String, Entry>,
}

impl Backup {
    /// Reads the backup in `state_dir`. A missing file is an empty backup; an unreadable or
    /// corrupt one is an error, because guessing would lose someone's original limit.
    pub fn load(state_dir: &Path) -> io::Result<Backup> {
        let path = state_dir.join(FILE_NAME);
        let users = match fs::read(&path) {
            Ok(bytes) => {
                let f: FileFormat = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is corrupt ({e}); fix or remove it", path.display()),
                    )
                })?;
                f.users
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        Ok(Backup { path, users })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, user_id: &str) -> Option<&Entry> {
        self.users.get(user_id)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// (user id, entry) pairs in a stable order.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        self.users
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records `original` for a user, persisting only when it changes.
    pub fn set_original(&mut self, user_id: &str, name: &str, original: i64) -> io::Result<()> {
        let entry = Entry {
            name: name.to_string(),
            original,
        };
        if self.users.get(user_id) == Some(&entry) {
            return Ok(());
        }
        let old = self.users.insert(user_id.to_string(), entry);
        if let Err(e) = self.save() {
            // Keep memory and disk in agreement: a backup we could not write is no backup.
            match old {
                Some(o) => self.users.insert(user_id.to_string(), o),
                None => self.users.remove(user_id),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Forgets a user whose original limit is back in place.
    pub fn remove(&mut self, user_id: &str) -> io::Result<()> {
        if self.users.remove(user_id).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            users: self.users.clone(),
        })
        .map_err(io::Error::other)?;
        crate::publish::write_atomic(&self.path, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("jd-backup-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_remove() {
        let d = tempdir("rt");
        let mut b = Backup::load(&d).unwrap();
        assert!(b.is_empty());
        b.set_original("u1", "alice", 0).unwrap();
        b.set_original("u2", "bob", 8_000_000).unwrap();
        let b2 = Backup::load(&d).unwrap();
        assert_eq!(b2.get("u2").unwrap().original, 8_000_000);
        assert_eq!(b2.entries().len(), 2);
        b.remove("u1").unwrap();
        let b3 = Backup::load(&d).unwrap();
        assert!(b3.get("u1").is_none());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unchanged_value_does_not_rewrite() {
        let d = tempdir("nowrite");
        let mut b = Backup::load(&d).unwrap();
        b.set_original("u1", "alice", 5).unwrap();
        let m1 = fs::metadata(b.path()).unwrap().modified().unwrap();
        // Make the file read-only to the rename: a rewrite would have to replace it.
        fs::remove_file(b.path()).unwrap();
        b.set_original("u1", "alice", 5).unwrap();
        assert!(!b.path().exists(), "no write for an unchanged entry");
        let _ = m1;
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_backup() {
        let d = tempdir("corrupt");
        fs::write(d.join(FILE_NAME), b"{not json").unwrap();
        let err = Backup::load(&d).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_write_keeps_memory_consistent() {
        let d = tempdir("fail");
        let mut b = Backup::load(&d).unwrap();
        // A directory where the file should be makes the rename fail.
        fs::create_dir_all(d.join(FILE_NAME)).unwrap();
        assert!(b.set_original("u1", "alice", 1).is_err());
        assert!(b.get("u1").is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}
