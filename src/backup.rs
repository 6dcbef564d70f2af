//! The durable record of users' original Jellyfin limits, so they can be put back on exit, on
//! `restore`, and after a crash at the next start. Written to flash only when it changes, and
//! always atomically (temp + fsync + rename): a power cut leaves the old file or the new one.
//!
//! Format 2 adds the Jellyfin server's Id (`/System/Info` `Id`): an entry is dropped for a
//! deleted user only when the server answering is positively the one the backup was taken on.
//! Format 1 files (no server Id) are read as they are; the Id is filled in once a user of the
//! backup is found on the server.

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

/// The newest format written.
pub const FORMAT: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    /// The Id of the Jellyfin server the originals were read from (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_id: Option<String>,
    users: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub struct Backup {
    path: PathBuf,
    server_id: Option<String>,
    users: BTreeMap<String, Entry>,
}

fn read_file(path: &Path) -> io::Result<FileFormat> {
    match fs::read(path) {
        Ok(bytes) => {
            let f: FileFormat = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is corrupt ({e}); fix or remove it", path.display()),
                )
            })?;
            if f.version > FORMAT {
                // A newer daemon's file may hold what this one cannot express: never rewrite it.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is format {} (this version reads up to {FORMAT}); run the newer jellydemon's `restore`",
                        path.display(),
                        f.version
                    ),
                ));
            }
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileFormat::default()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

impl Backup {
    /// Reads the backup in `state_dir`. A missing file is an empty backup; an unreadable or
    /// corrupt one is an error, because guessing would lose someone's original limit.
    pub fn load(state_dir: &Path) -> io::Result<Backup> {
        let path = state_dir.join(FILE_NAME);
        let f = read_file(&path)?;
        Ok(Backup {
            path,
            server_id: f.server_id,
            users: f.users,
        })
    }

    /// Moves the backup to another state directory (a reload changed `state_dir`). Entries
    /// already in a backup there are kept, this one's win for the same user; the new file is
    /// written before the old one is removed, so a failure at any point loses nothing.
    pub fn move_to(&mut self, state_dir: &Path) -> io::Result<()> {
        let path = state_dir.join(FILE_NAME);
        if path == self.path {
            return Ok(());
        }
        let there = read_file(&path)?;
        let server_id = match (&self.server_id, there.server_id) {
            (Some(mine), Some(theirs)) if !there.users.is_empty() && *mine != theirs => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds original limits of another Jellyfin server; not merging",
                        path.display()
                    ),
                ))
            }
            (Some(mine), _) => Some(mine.clone()),
            (None, theirs) => theirs,
        };
        let mut users = there.users;
        users.extend(self.users.iter().map(|(k, v)| (k.clone(), v.clone())));
        let moved = Backup {
            path,
            server_id,
            users,
        };
        if !moved.users.is_empty() {
            moved.save()?;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "moved to {}, but cannot remove {}: {e}",
                        moved.path.display(),
                        self.path.display()
                    ),
                ))
            }
        }
        *self = moved;
        Ok(())
    }

    /// The Id of the Jellyfin server the entries belong to, when known.
    pub fn server_id(&self) -> Option<&str> {
        self.server_id.as_deref()
    }

    /// Records which server the entries belong to (persisted when it changes).
    pub fn set_server_id(&mut self, id: &str) -> io::Result<()> {
        if self.server_id.as_deref() == Some(id) {
            return Ok(());
        }
        let old = self.server_id.replace(id.to_string());
        if self.users.is_empty() {
            // Nothing to protect yet: written with the first entry.
            return Ok(());
        }
        if let Err(e) = self.save() {
            self.server_id = old;
            return Err(e);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn contains(&self, user_id: &str) -> bool {
        self.users.contains_key(user_id)
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
            version: FORMAT,
            server_id: self.server_id.clone(),
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
    fn format_1_is_read_and_rewritten_as_format_2_with_the_server_id() {
        let d = tempdir("v1");
        fs::write(
            d.join(FILE_NAME),
            br#"{"version":1,"users":{"u1":{"name":"alice","original":7000000}}}"#,
        )
        .unwrap();
        let mut b = Backup::load(&d).unwrap();
        assert_eq!(b.get("u1").unwrap().original, 7_000_000);
        assert_eq!(b.server_id(), None);
        b.set_server_id("e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68").unwrap();
        let text = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        let b2 = Backup::load(&d).unwrap();
        assert_eq!(b2.server_id(), Some("e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68"));
        assert_eq!(b2.get("u1").unwrap().original, 7_000_000);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_not_rewritten() {
        let d = tempdir("v9");
        fs::write(d.join(FILE_NAME), br#"{"version":9,"users":{}}"#).unwrap();
        let err = Backup::load(&d).unwrap_err();
        assert!(err.to_string().contains("format 9"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn move_to_carries_the_entries_and_removes_the_old_file() {
        let d = tempdir("move");
        let (a, b) = (d.join("a"), d.join("b"));
        let mut bk = Backup::load(&a).unwrap();
        bk.set_server_id("s1").unwrap();
        bk.set_original("u1", "alice", 3).unwrap();
        // The new directory already holds another user's original: kept.
        let mut other = Backup::load(&b).unwrap();
        other.set_original("u2", "bob", 4).unwrap();
        bk.move_to(&b).unwrap();
        assert!(!a.join(FILE_NAME).exists());
        let there = Backup::load(&b).unwrap();
        assert_eq!(there.get("u1").unwrap().original, 3);
        assert_eq!(there.get("u2").unwrap().original, 4);
        assert_eq!(there.server_id(), Some("s1"));
        assert_eq!(bk.path(), b.join(FILE_NAME));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_move_keeps_the_old_file() {
        let d = tempdir("movefail");
        let a = d.join("a");
        let mut bk = Backup::load(&a).unwrap();
        bk.set_original("u1", "alice", 3).unwrap();
        // A file where the new directory should be: nothing can be written there.
        fs::write(d.join("b"), b"x").unwrap();
        assert!(bk.move_to(&d.join("b")).is_err());
        assert_eq!(Backup::load(&a).unwrap().get("u1").unwrap().original, 3);
        assert_eq!(bk.path(), a.join(FILE_NAME));
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
