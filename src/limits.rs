//! Users' Jellyfin limits and the promise that every original comes back: the backup before the
//! first change, telling the daemon's own writes from an admin's hand edit, restoring (one path
//! for the loop, SIGTERM and the `restore` verb), recovery after a crash, and carrying the
//! backup along when `state_dir` changes. Everything goes through `&mut dyn MediaServer`, so
//! the faults real servers have run in unit tests with a fake.
//!
//! What the real servers do (reference/real-world.md, reference/jellyfin-api.md §5, §8):
//! - a policy update is a full replace: GET the user, change `RemoteClientBitrateLimit`, POST
//!   the whole policy, 204;
//! - a busy server applies the POST at once and may answer after the client's timeout, so a
//!   failed or timed-out write has an unknown outcome: the value may be the daemon's own;
//! - a wrong base path, a reverse proxy or another service answers 404 for everything, so a
//!   404 for `/Users/{id}` alone never means the user was deleted.

use crate::backup::Backup;
use crate::jellyfin::{self, MediaServer, MAX_LIMIT_BPS};
use log::{info, warn};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Users whose original is put back per tick at most: a large backup never makes one tick long.
pub const RESTORES_PER_TICK: usize = 4;
/// Values a user's limit held because of this process, remembered per user (bounded).
const WRITTEN_KEPT: usize = 16;
/// Longest wait between two tries at a user's original that could not be put back.
const RETRY_MAX_S: f64 = 60.0;

/// The limit one user should have now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub user_id: String,
    pub user_name: String,
    /// b/s; clamped to what Jellyfin stores.
    pub limit_bps: u64,
}

/// A limit this call changed on the server (for the log and webhooks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub user: String,
    pub old_bps: i64,
    pub new_bps: i64,
}

/// What this process knows of one user whose original is backed up.
#[derive(Clone, Debug, Default)]
struct Known {
    /// The value the server holds as far as this process knows (a read or a 204 confirmed it).
    current: Option<i64>,
    /// Values the limit held because of this process: written (answered or not) or found and
    /// taken as its own. A timed-out write may have been applied, so its value stays here: a
    /// later read that finds it is recognised, never mistaken for an admin's edit.
    written: Vec<i64>,
}

impl Known {
    fn remember(&mut self, v: i64) {
        if !self.written.contains(&v) {
            if self.written.len() >= WRITTEN_KEPT {
                self.written.remove(0);
            }
            self.written.push(v);
        }
    }
}

/// How putting one original back went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The original is back (or was there already); the entry is gone.
    Back,
    /// An admin changed the limit by hand after the daemon's last change: theirs stays.
    AdminValueKept(i64),
    /// The same server positively has no such user any more: the entry is gone.
    UserDeleted,
}

/// Why an original could not be put back now (the entry stays backed up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub message: String,
    /// The server is away (unreachable, too slow): other users would wait for the same.
    pub server_away: bool,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn failed(message: String, e: Option<&jellyfin::Error>) -> Failed {
    Failed {
        message,
        server_away: matches!(
            e,
            Some(jellyfin::Error::Unreachable(_) | jellyfin::Error::Timeout)
        ),
    }
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    at: f64,
    wait: f64,
}

pub struct Limits {
    backup: Result<Backup, String>,
    known: HashMap<String, Known>,
    /// `/System/Info` `Id` of the configured server, read once per configuration.
    server_id: Option<String>,
    retry: HashMap<String, Retry>,
    /// The server was away at the last try: no restore round before this time.
    away_until: Option<f64>,
    /// Where the next tick's bounded restores start, so no entry waits behind failing ones.
    cursor: Option<String>,
    /// The last `[dry run]` line per user, so it is said once per change.
    dry_said: HashMap<String, u64>,
}

fn clamp(bps: u64) -> i64 {
    bps.min(MAX_LIMIT_BPS as u64) as i64
}

pub fn fmt_limit(bps: i64) -> String {
    if bps <= 0 {
        "none".into()
    } else {
        format!("{:.1} Mbit/s", bps as f64 / 1e6)
    }
}

impl Limits {
    pub fn new(backup: Result<Backup, String>) -> Limits {
        Limits {
            backup,
            known: HashMap::new(),
            server_id: None,
            retry: HashMap::new(),
            away_until: None,
            cursor: None,
            dry_said: HashMap::new(),
        }
    }

    /// The backup in `state_dir` (an unreadable one is reported, and no limit is changed).
    pub fn load(state_dir: &Path) -> Limits {
        Limits::new(Backup::load(state_dir).map_err(|e| e.to_string()))
    }

    /// Why no limit can be managed (the backup could not be read), if so.
    pub fn error(&self) -> Option<&str> {
        self.backup.as_ref().err().map(String::as_str)
    }

    /// Backed-up originals not yet put back.
    pub fn pending(&self) -> usize {
        self.backup.as_ref().map(Backup::len).unwrap_or(0)
    }

    /// The users whose originals are backed up, in a stable order.
    pub fn pending_users(&self) -> Vec<String> {
        match &self.backup {
            Ok(b) => b.entries().into_iter().map(|(u, _)| u).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The limit this process knows the user has because of it, for the status.
    pub fn limit_of(&self, user_id: &str) -> Option<i64> {
        self.known.get(user_id).and_then(|k| k.current)
    }

    /// The server may be another one now (new URL, or it came back): read its Id again, and
    /// try the originals still owed at once rather than after their pause.
    pub fn server_changed(&mut self) {
        self.server_id = None;
        self.retry.clear();
        self.away_until = None;
    }

    /// A reload: the same `state_dir` keeps what is in memory (it is what is on flash); a new
    /// one gets the backup moved there. An unreadable backup is read again (it may be fixed).
    pub fn reconfigure(&mut self, state_dir: &Path) {
        self.server_changed();
        match self.backup.as_mut() {
            Ok(b) => {
                let old = b.path().to_path_buf();
                match b.move_to(state_dir) {
                    Ok(()) if b.path() != old => info!(
                        "backup of original limits moved from {} to {}",
                        old.display(),
                        b.path().display()
                    ),
                    Ok(()) => {}
                    Err(e) => warn!(
                        "state_dir changed but the backup stays at {} ({e})",
                        old.display()
                    ),
                }
            }
            Err(_) => *self = Limits::load(state_dir),
        }
    }

    fn server_id(&mut self, server: &mut dyn MediaServer) -> Result<String, jellyfin::Error> {
        if let Some(id) = &self.server_id {
            return Ok(id.clone());
        }
        let id = server
            .system_info()?
            .id
            .filter(|i| !i.trim().is_empty())
            .ok_or_else(|| jellyfin::Error::Malformed("/System/Info has no server Id".into()))?
            .to_ascii_lowercase();
        self.server_id = Some(id.clone());
        Ok(id)
    }

    /// Sets each wanted limit. A user is read (`GET /Users/{id}`) only when the limit this
    /// process knows differs from the wanted one, so a steady state costs no request. Before
    /// the first change the original is saved durably, or nothing is changed.
    pub fn apply(
        &mut self,
        server: &mut dyn MediaServer,
        wants: &[Want],
        dry: bool,
        errors: &mut Vec<String>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if dry {
            for w in wants {
                if self.dry_said.get(&w.user_id) != Some(&w.limit_bps) {
                    info!(
                        "[dry run] would set {}'s remote limit to {}",
                        w.user_name,
                        fmt_limit(clamp(w.limit_bps))
                    );
                    self.dry_said.insert(w.user_id.clone(), w.limit_bps);
                }
            }
            return changes;
        }
        if let Err(e) = &self.backup {
            errors.push(format!("limits not managed: {e}"));
            return changes;
        }
        for w in wants {
            let desired = clamp(w.limit_bps);
            if self.limit_of(&w.user_id) == Some(desired) {
                continue;
            }
            match self.apply_one(server, w, desired) {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        changes
    }

    fn apply_one(
        &mut self,
        server: &mut dyn MediaServer,
        w: &Want,
        desired: i64,
    ) -> Result<Option<Change>, String> {
        let name = &w.user_name;
        let user = server
            .user(&w.user_id)
            .map_err(|e| format!("cannot read {name}'s Jellyfin policy: {e}"))?;
        let current = user.remote_limit;
        let sid = self
            .server_id(server)
            .map_err(|e| format!("cannot identify the Jellyfin server: {e}"))?;
        let backup = self.backup.as_mut().map_err(|e| e.clone())?;
        match backup.server_id() {
            Some(b) if b != sid && !backup.is_empty() => {
                return Err(format!(
                    "{} holds original limits of Jellyfin server {b}, but jellyfin.url answers as server {sid}: \
                     limits are not changed until `jellydemon restore` is run against that server or the file is moved away",
                    backup.path().display()
                ));
            }
            _ => {}
        }
        if !backup.contains(&w.user_id) {
            // Save the original durably before the first change, or change nothing.
            backup
                .set_server_id(&sid)
                .and_then(|_| backup.set_original(&w.user_id, &user.name, current))
                .map_err(|e| format!("cannot save {}'s original limit: {e}", user.name))?;
            self.known.insert(w.user_id.clone(), Known::default());
        } else if backup.server_id().is_none() {
            // A format-1 backup: this server knows one of its users, so it is the same one.
            let _ = backup.set_server_id(&sid);
        }
        let known = self.known.entry(w.user_id.clone()).or_default();
        if known.written.is_empty() || known.written.contains(&current) {
            // Nothing of this process's yet (an entry left by an earlier run): what is there
            // is taken as the daemon's, the backed-up original stays.
            known.remember(current);
        } else {
            info!(
                "{}'s limit was changed by hand to {}; that is now the original to restore",
                user.name,
                fmt_limit(current)
            );
            backup
                .set_original(&w.user_id, &user.name, current)
                .map_err(|e| format!("cannot save {}'s original limit: {e}", user.name))?;
            known.written.clear();
            known.remember(current);
        }
        known.current = Some(current);
        if current == desired {
            return Ok(None);
        }
        // Remembered before the POST: its outcome is unknown until a 204 or a read says.
        known.remember(desired);
        known.current = None;
        server
            .set_policy(&w.user_id, &user.policy_with_limit(desired))
            .map_err(|e| format!("cannot set {}'s limit: {e}", user.name))?;
        if let Some(k) = self.known.get_mut(&w.user_id) {
            k.current = Some(desired);
        }
        info!(
            "{}: remote limit {} -> {}",
            user.name,
            fmt_limit(current),
            fmt_limit(desired)
        );
        Ok(Some(Change {
            user: user.name.clone(),
            old_bps: current,
            new_bps: desired,
        }))
    }

    /// Puts back, within the per-tick bound, the originals of every backed-up user not in
    /// `managed` (those the daemon limits now or may soon again). Users that cannot be done
    /// now are tried again on later ticks, with a growing pause, until every original is back.
    pub fn restore_unmanaged(
        &mut self,
        server: &mut dyn MediaServer,
        managed: &BTreeSet<String>,
        now: f64,
        errors: &mut Vec<String>,
    ) {
        let before = errors.len();
        self.restore_round(server, managed, now, errors);
        // Between two tries the status still says what is owed: never silence.
        let owed = match &self.backup {
            Ok(b) => b
                .entries()
                .iter()
                .filter(|(u, _)| !managed.contains(u))
                .count(),
            Err(_) => 0,
        };
        if owed > 0 && errors.len() == before {
            errors.push(format!(
                "{owed} original limit(s) still to restore (see the log); retrying"
            ));
        }
    }

    fn restore_round(
        &mut self,
        server: &mut dyn MediaServer,
        managed: &BTreeSet<String>,
        now: f64,
        errors: &mut Vec<String>,
    ) {
        let Ok(b) = &self.backup else { return };
        if self.away_until.is_some_and(|t| now < t) {
            return;
        }
        let mut todo: Vec<String> = b
            .entries()
            .into_iter()
            .map(|(uid, _)| uid)
            .filter(|u| !managed.contains(u))
            .collect();
        if todo.is_empty() {
            return;
        }
        // Rotate so the next try starts after the last user tried.
        if let Some(c) = &self.cursor {
            let at = todo.iter().position(|u| u > c).unwrap_or(0);
            todo.rotate_left(at);
        }
        let mut tried = 0;
        for uid in todo {
            if tried >= RESTORES_PER_TICK {
                break;
            }
            if self.retry.get(&uid).is_some_and(|r| now < r.at) {
                continue;
            }
            tried += 1;
            self.cursor = Some(uid.clone());
            match self.restore_user(server, &uid) {
                Ok(_) => {
                    self.retry.remove(&uid);
                }
                Err(e) => {
                    let r = self
                        .retry
                        .entry(uid.clone())
                        .or_insert(Retry { at: now, wait: 0.5 });
                    r.wait = (r.wait * 2.0).min(RETRY_MAX_S);
                    r.at = now + r.wait;
                    errors.push(e.message.clone());
                    if e.server_away {
                        self.away_until = Some(r.at);
                        // The server is away: the rest would wait for the same timeout.
                        break;
                    }
                }
            }
        }
    }

    /// Every original back, as far as the server lets: SIGTERM and the `restore` verb. Stops
    /// at the first sign that the server is away (`stop_when_away`), else tries every user.
    /// Returns what could not be done (those entries stay backed up).
    pub fn restore_all(
        &mut self,
        server: &mut dyn MediaServer,
        stop_when_away: bool,
    ) -> Vec<String> {
        let pending: Vec<String> = match &self.backup {
            Ok(b) => b.entries().into_iter().map(|(u, _)| u).collect(),
            Err(e) => return vec![e.clone()],
        };
        let mut problems = Vec::new();
        for uid in pending {
            if let Err(e) = self.restore_user(server, &uid) {
                let away = e.server_away;
                problems.push(e.message);
                if away && stop_when_away {
                    break;
                }
            }
        }
        problems
    }

    /// The one way an original is put back. The user is read first: when the limit there is
    /// the daemon's (one it wrote or found, or anything for an entry left by an earlier run),
    /// the original is written; an admin's later value is left alone. The entry goes only when
    /// the original is confirmed back, the admin's value stays, or the user is positively gone.
    pub fn restore_user(
        &mut self,
        server: &mut dyn MediaServer,
        uid: &str,
    ) -> Result<Restored, Failed> {
        let entry = match &self.backup {
            Ok(b) => match b.get(uid) {
                Some(e) => e.clone(),
                None => return Ok(Restored::Back),
            },
            Err(e) => return Err(failed(e.clone(), None)),
        };
        let name = entry.name.clone();
        let user = match server.user(uid) {
            Ok(u) => u,
            Err(jellyfin::Error::NotFound) => {
                return match self.user_is_gone(server, uid) {
                    Ok(true) => {
                        info!("{name} no longer exists on the Jellyfin server; forgetting their original limit");
                        self.forget(uid)?;
                        Ok(Restored::UserDeleted)
                    }
                    Ok(false) => Err(failed(format!(
                        "cannot restore {name}'s limit: the server answers 404 for the user, but it is not \
                         positively the Jellyfin server the backup was taken on with that user deleted \
                         (check jellyfin.url); kept in the backup"
                    ), None)),
                    Err(e) => Err(failed(
                        format!("cannot restore {name}'s limit now ({e}); kept in the backup"),
                        Some(&e),
                    )),
                };
            }
            Err(e) => {
                return Err(failed(
                    format!("cannot restore {name}'s limit now ({e}); will retry"),
                    Some(&e),
                ))
            }
        };
        let unbound = matches!(&self.backup, Ok(b) if b.server_id().is_none());
        if unbound {
            // A format-1 backup: this server knows one of its users, so it is the one.
            if let (Ok(sid), Ok(b)) = (self.server_id(server), self.backup.as_mut()) {
                let _ = b.set_server_id(&sid);
            }
        }
        let current = user.remote_limit;
        let ours = match self.known.get(uid) {
            None => true,
            Some(k) => k.written.is_empty() || k.written.contains(&current),
        };
        if !ours {
            info!(
                "{name}'s limit was changed by hand to {}; leaving it",
                fmt_limit(current)
            );
            self.forget(uid)?;
            return Ok(Restored::AdminValueKept(current));
        }
        if current != entry.original {
            if let Some(k) = self.known.get_mut(uid) {
                k.remember(current);
                k.remember(entry.original);
                k.current = None;
            }
            server
                .set_policy(uid, &user.policy_with_limit(entry.original))
                .map_err(|e| {
                    failed(
                        format!("cannot restore {name}'s limit ({e}); will retry"),
                        Some(&e),
                    )
                })?;
            info!(
                "{name}: original remote limit {} restored",
                fmt_limit(entry.original)
            );
        }
        self.forget(uid)?;
        Ok(Restored::Back)
    }

    /// True only when the server is positively the one the backup was taken on (same Id) and
    /// its user list lacks the user.
    fn user_is_gone(
        &mut self,
        server: &mut dyn MediaServer,
        uid: &str,
    ) -> Result<bool, jellyfin::Error> {
        let Some(backed) = self
            .backup
            .as_ref()
            .ok()
            .and_then(|b| b.server_id().map(str::to_string))
        else {
            return Ok(false);
        };
        let sid = self.server_id(server)?;
        if sid != backed {
            return Ok(false);
        }
        let users = server.users()?;
        Ok(!users.iter().any(|u| u.id.eq_ignore_ascii_case(uid)))
    }

    fn forget(&mut self, uid: &str) -> Result<(), Failed> {
        if let Ok(b) = self.backup.as_mut() {
            b.remove(uid)
                .map_err(|e| failed(format!("cannot update {}: {e}", b.path().display()), None))?;
        }
        self.known.remove(uid);
        self.retry.remove(uid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The fake server behaves as reference/real-world.md says real ones do: a busy Jellyfin
    //! applies a policy POST and answers after the client's timeout; a wrong base path or a
    //! reverse proxy answers 404 for everything; the policy POST is a full replace (GET the
    //! user, change RemoteClientBitrateLimit, POST the whole policy, 204 —
    //! reference/jellyfin-api.md §5).
    use super::*;
    use crate::jellyfin::{Error, PlayRequest, ServerInfo, Session, User};
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    const M: i64 = 1_000_000;
    const SID: &str = "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68";

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        Normal,
        /// The POST changes the user, then the answer comes too late.
        ApplyThenTimeout,
        /// The POST never reaches the server: connection timeout.
        LoseWrites,
        /// A wrong base path: 404 for every path.
        NotFoundEverything,
        Unreachable,
    }

    struct Fake {
        id: String,
        users: BTreeMap<String, (String, i64)>,
        mode: Mode,
        users_too_large: bool,
        requests: Vec<String>,
    }

    impl Fake {
        fn new(users: &[(&str, &str, i64)]) -> Fake {
            Fake {
                id: SID.into(),
                users: users
                    .iter()
                    .map(|(id, n, l)| (id.to_string(), (n.to_string(), *l)))
                    .collect(),
                mode: Mode::Normal,
                users_too_large: false,
                requests: Vec::new(),
            }
        }
        fn limit(&self, id: &str) -> i64 {
            self.users[id].1
        }
        /// An admin's edit in the dashboard.
        fn hand_edit(&mut self, id: &str, v: i64) {
            self.users.get_mut(id).unwrap().1 = v;
        }
        fn gate(&mut self, what: String) -> Result<(), Error> {
            self.requests.push(what);
            match self.mode {
                Mode::Unreachable => Err(Error::Unreachable("connection refused".into())),
                Mode::NotFoundEverything => Err(Error::NotFound),
                _ => Ok(()),
            }
        }
        fn user_of(&self, id: &str) -> Option<User> {
            let (name, l) = self.users.get(id)?;
            let mut policy = Map::new();
            policy.insert("RemoteClientBitrateLimit".into(), Value::from(*l));
            policy.insert("AuthenticationProviderId".into(), "a".into());
            policy.insert("PasswordResetProviderId".into(), "b".into());
            policy.insert("EnableRemoteAccess".into(), true.into());
            Some(User {
                id: id.into(),
                name: name.clone(),
                policy,
                remote_limit: *l,
            })
        }
    }

    impl MediaServer for Fake {
        fn system_info(&mut self) -> Result<ServerInfo, Error> {
            self.gate("GET /System/Info".into())?;
            Ok(ServerInfo {
                id: Some(self.id.clone()),
                ..ServerInfo::default()
            })
        }
        fn sessions(&mut self) -> Result<Vec<Session>, Error> {
            self.gate("GET /Sessions".into())?;
            Ok(Vec::new())
        }
        fn user(&mut self, user_id: &str) -> Result<User, Error> {
            self.gate(format!("GET /Users/{user_id}"))?;
            self.user_of(user_id).ok_or(Error::NotFound)
        }
        fn users(&mut self) -> Result<Vec<User>, Error> {
            self.gate("GET /Users".into())?;
            if self.users_too_large {
                return Err(Error::TooLarge);
            }
            let ids: Vec<String> = self.users.keys().cloned().collect();
            Ok(ids.iter().filter_map(|i| self.user_of(i)).collect())
        }
        fn set_policy(&mut self, user_id: &str, policy: &Map<String, Value>) -> Result<(), Error> {
            self.gate(format!("POST /Users/{user_id}/Policy"))?;
            // A full replace: the fake keeps only the limit, but checks the rest came along.
            assert_eq!(policy.get("EnableRemoteAccess"), Some(&Value::from(true)));
            let v = policy["RemoteClientBitrateLimit"].as_i64().unwrap();
            match self.mode {
                Mode::LoseWrites => return Err(Error::Timeout),
                Mode::ApplyThenTimeout => {
                    self.users.get_mut(user_id).ok_or(Error::NotFound)?.1 = v;
                    return Err(Error::Timeout);
                }
                _ => {}
            }
            self.users.get_mut(user_id).ok_or(Error::NotFound)?.1 = v;
            Ok(())
        }
        fn stop(&mut self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn play_now(&mut self, _: &str, _: &PlayRequest) -> Result<(), Error> {
            Ok(())
        }
        fn message(&mut self, _: &str, _: &str, _: &str, _: u64) -> Result<(), Error> {
            Ok(())
        }
        fn item_bitrate(
            &mut self,
            _: &str,
            _: &str,
            _: Option<&str>,
        ) -> Result<Option<u64>, Error> {
            Ok(None)
        }
    }

    static N: AtomicU32 = AtomicU32::new(0);

    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Dir {
            let d = std::env::temp_dir().join(format!(
                "jd-limits-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&d);
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn want(uid: &str, bps: i64) -> Want {
        Want {
            user_id: uid.into(),
            user_name: format!("name-{uid}"),
            limit_bps: bps as u64,
        }
    }

    fn original(dir: &Dir, uid: &str) -> Option<i64> {
        Backup::load(&dir.0).unwrap().get(uid).map(|e| e.original)
    }

    fn apply(l: &mut Limits, s: &mut Fake, w: &[Want]) -> Vec<String> {
        let mut errors = Vec::new();
        l.apply(s, w, false, &mut errors);
        errors
    }

    #[test]
    fn first_change_saves_the_original_and_the_server_id() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        assert!(apply(&mut l, &mut s, &[want("u1", 8 * M)]).is_empty());
        assert_eq!(s.limit("u1"), 8 * M);
        assert_eq!(original(&d, "u1"), Some(20 * M));
        assert_eq!(Backup::load(&d.0).unwrap().server_id(), Some(SID));
        assert_eq!(l.limit_of("u1"), Some(8 * M));
    }

    #[test]
    fn steady_state_costs_no_request() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 0)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.requests.clear();
        for _ in 0..5 {
            assert!(apply(&mut l, &mut s, &[want("u1", 8 * M)]).is_empty());
        }
        assert!(s.requests.is_empty(), "{:?}", s.requests);
        // A change reads that one user, never the whole list.
        apply(&mut l, &mut s, &[want("u1", 6 * M)]);
        assert_eq!(s.requests, ["GET /Users/u1", "POST /Users/u1/Policy"]);
    }

    #[test]
    fn applied_but_timed_out_write_is_recognised_as_the_daemons_own() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        s.mode = Mode::ApplyThenTimeout;
        let errors = apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        assert!(errors[0].contains("did not answer in time"), "{errors:?}");
        assert_eq!(s.limit("u1"), 8 * M, "the busy server applied it");
        s.mode = Mode::Normal;
        // Next tick: 8 Mbit/s is found; it is the daemon's own, not an admin's edit.
        assert!(apply(&mut l, &mut s, &[want("u1", 6 * M)]).is_empty());
        assert_eq!(original(&d, "u1"), Some(20 * M));
        assert_eq!(s.limit("u1"), 6 * M);
        assert_eq!(l.restore_user(&mut s, "u1"), Ok(Restored::Back));
        assert_eq!(s.limit("u1"), 20 * M);
    }

    #[test]
    fn timed_out_write_then_an_earlier_value_is_still_the_daemons() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.mode = Mode::LoseWrites;
        assert!(!apply(&mut l, &mut s, &[want("u1", 6 * M)]).is_empty());
        s.mode = Mode::Normal;
        // The 6 was lost: 8 is still there, and still the daemon's.
        assert!(apply(&mut l, &mut s, &[want("u1", 5 * M)]).is_empty());
        assert_eq!(original(&d, "u1"), Some(20 * M));
    }

    #[test]
    fn kill_9_right_after_a_timed_out_write_loses_nothing() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        s.mode = Mode::ApplyThenTimeout;
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        drop(l); // kill -9: nothing in memory survives
        s.mode = Mode::Normal;
        let mut l = Limits::load(&d.0);
        // The viewer is still streaming at the next start: the value found is taken as the
        // previous run's, the original stays.
        assert!(apply(&mut l, &mut s, &[want("u1", 6 * M)]).is_empty());
        assert_eq!(original(&d, "u1"), Some(20 * M));
        drop(l);
        let mut l = Limits::load(&d.0);
        assert!(l.restore_all(&mut s, false).is_empty());
        assert_eq!(s.limit("u1"), 20 * M);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn inherited_entry_whose_first_write_is_lost_keeps_its_original() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        drop(l);
        let mut l = Limits::load(&d.0);
        s.mode = Mode::LoseWrites;
        apply(&mut l, &mut s, &[want("u1", 6 * M)]);
        s.mode = Mode::Normal;
        // 8 (the previous run's) is still there: not a hand edit.
        apply(&mut l, &mut s, &[want("u1", 5 * M)]);
        assert_eq!(original(&d, "u1"), Some(20 * M));
    }

    #[test]
    fn hand_edit_becomes_the_original() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.hand_edit("u1", 3 * M);
        // The daemon does not re-read in a steady state; the next change finds the edit.
        apply(&mut l, &mut s, &[want("u1", 6 * M)]);
        assert_eq!(original(&d, "u1"), Some(3 * M));
        assert_eq!(s.limit("u1"), 6 * M);
        l.restore_user(&mut s, "u1").unwrap();
        assert_eq!(s.limit("u1"), 3 * M);
    }

    #[test]
    fn hand_edit_after_the_last_change_is_left_at_restore() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.hand_edit("u1", 3 * M);
        assert_eq!(
            l.restore_user(&mut s, "u1"),
            Ok(Restored::AdminValueKept(3 * M))
        );
        assert_eq!(s.limit("u1"), 3 * M);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn timed_out_restore_that_was_applied_completes_on_the_retry() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.mode = Mode::ApplyThenTimeout;
        assert!(l.restore_user(&mut s, "u1").unwrap_err().server_away);
        assert_eq!(l.pending(), 1, "unconfirmed: kept");
        s.mode = Mode::Normal;
        assert_eq!(l.restore_user(&mut s, "u1"), Ok(Restored::Back));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn not_found_everywhere_keeps_the_entry() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        // A wrong base path after a reload: 404 for everything.
        s.mode = Mode::NotFoundEverything;
        l.server_changed();
        assert!(l.restore_user(&mut s, "u1").is_err());
        assert_eq!(original(&d, "u1"), Some(20 * M));
        s.mode = Mode::Normal;
        l.restore_user(&mut s, "u1").unwrap();
        assert_eq!(s.limit("u1"), 20 * M);
    }

    #[test]
    fn user_deleted_on_the_same_server_is_forgotten() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M), ("u2", "bob", 0)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.users.remove("u1");
        assert_eq!(l.restore_user(&mut s, "u1"), Ok(Restored::UserDeleted));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn another_server_or_an_unreadable_user_list_keeps_the_entry() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        // Another Jellyfin (a different Id) without that user.
        let mut other = Fake::new(&[("u9", "zoe", 0)]);
        other.id = "ffffffffffffffffffffffffffffffff".into();
        l.server_changed();
        assert!(l.restore_user(&mut other, "u1").is_err());
        assert_eq!(l.pending(), 1);
        // The same server, but its user list is too large to read: not positive.
        s.users.remove("u1");
        s.users_too_large = true;
        l.server_changed();
        assert!(l.restore_user(&mut s, "u1").is_err());
        assert_eq!(l.pending(), 1);
        // And no limit of that other server is touched while the backup is another's.
        l.server_changed();
        let errors = apply(&mut l, &mut other, &[want("u9", 8 * M)]);
        assert!(
            errors[0].contains("holds original limits of Jellyfin server"),
            "{errors:?}"
        );
        assert_eq!(other.limit("u9"), 0);
    }

    #[test]
    fn format_1_backup_is_bound_to_the_server_that_knows_its_users() {
        let d = Dir::new();
        std::fs::create_dir_all(&d.0).unwrap();
        std::fs::write(
            d.0.join(crate::backup::FILE_NAME),
            br#"{"version":1,"users":{"u1":{"name":"alice","original":20000000},"u2":{"name":"bob","original":0}}}"#,
        )
        .unwrap();
        let mut s = Fake::new(&[("u1", "alice", 8 * M)]);
        let mut l = Limits::load(&d.0);
        // No server Id in the file: a 404 alone cannot drop bob.
        assert!(l.restore_user(&mut s, "u2").is_err());
        assert_eq!(l.restore_user(&mut s, "u1"), Ok(Restored::Back));
        assert_eq!(s.limit("u1"), 20 * M);
        // alice was found: this is the backup's server, and bob is not on it.
        assert_eq!(Backup::load(&d.0).unwrap().server_id(), Some(SID));
        assert_eq!(l.restore_user(&mut s, "u2"), Ok(Restored::UserDeleted));
    }

    #[test]
    fn unmanaged_entries_are_restored_managed_ones_kept() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M), ("u2", "bob", 0)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M), want("u2", 4 * M)]);
        let mut errors = Vec::new();
        let managed: BTreeSet<String> = ["u1".to_string()].into();
        l.restore_unmanaged(&mut s, &managed, 0.0, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((s.limit("u1"), s.limit("u2")), (8 * M, 0));
        // Not managed any more at all (dry run, manage_limits off, capacity lost).
        l.restore_unmanaged(&mut s, &BTreeSet::new(), 1.0, &mut errors);
        assert_eq!(s.limit("u1"), 20 * M);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn unreachable_at_start_is_retried_until_everything_is_back() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M), ("u2", "bob", 0)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M), want("u2", 4 * M)]);
        drop(l);
        let mut l = Limits::load(&d.0);
        s.mode = Mode::Unreachable;
        s.requests.clear();
        let problems = l.restore_all(&mut s, true);
        assert_eq!(
            problems.len(),
            1,
            "stops at the first sign the server is away"
        );
        assert_eq!(s.requests.len(), 1);
        let mut errors = Vec::new();
        let none = BTreeSet::new();
        l.restore_unmanaged(&mut s, &none, 0.0, &mut errors);
        assert_eq!(errors.len(), 1);
        // Within the pause nothing is asked; once the server is back, at once.
        s.requests.clear();
        l.restore_unmanaged(&mut s, &none, 0.5, &mut errors);
        assert!(s.requests.is_empty(), "{:?}", s.requests);
        s.mode = Mode::Normal;
        l.server_changed();
        l.restore_unmanaged(&mut s, &none, 0.6, &mut errors);
        assert_eq!(l.pending(), 0, "both back in the first tick after");
        assert_eq!((s.limit("u1"), s.limit("u2")), (20 * M, 0));
    }

    #[test]
    fn a_failing_restore_is_retried_with_a_growing_pause_until_it_succeeds() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        s.mode = Mode::NotFoundEverything;
        let (none, mut errors) = (BTreeSet::new(), Vec::new());
        let mut tries = 0;
        for t in 0..120 {
            let before = s.requests.len();
            l.restore_unmanaged(&mut s, &none, t as f64, &mut errors);
            tries += usize::from(s.requests.len() > before);
        }
        assert!((5..=10).contains(&tries), "{tries} tries in 120 s");
        assert_eq!(l.pending(), 1);
        s.mode = Mode::Normal;
        let mut t = 120.0;
        while l.pending() > 0 && t < 200.0 {
            l.restore_unmanaged(&mut s, &none, t, &mut errors);
            t += 1.0;
        }
        assert_eq!(l.pending(), 0, "back within the longest pause");
        assert_eq!(s.limit("u1"), 20 * M);
    }

    #[test]
    fn restores_per_tick_are_bounded_and_rotate() {
        let d = Dir::new();
        let ids: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
        let users: Vec<(&str, &str, i64)> = ids.iter().map(|i| (i.as_str(), "x", 0)).collect();
        let mut s = Fake::new(&users);
        let mut l = Limits::load(&d.0);
        let wants: Vec<Want> = ids.iter().map(|i| want(i, 4 * M)).collect();
        apply(&mut l, &mut s, &wants);
        let mut errors = Vec::new();
        l.restore_unmanaged(&mut s, &BTreeSet::new(), 0.0, &mut errors);
        assert_eq!(l.pending(), 10 - RESTORES_PER_TICK);
        l.restore_unmanaged(&mut s, &BTreeSet::new(), 1.0, &mut errors);
        l.restore_unmanaged(&mut s, &BTreeSet::new(), 2.0, &mut errors);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn dry_run_writes_nothing_but_says_it_once() {
        let d = Dir::new();
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&d.0);
        let mut errors = Vec::new();
        l.apply(&mut s, &[want("u1", 8 * M)], true, &mut errors);
        assert!(s.requests.is_empty());
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn state_dir_change_carries_the_backup() {
        let (a, b) = (Dir::new(), Dir::new());
        let mut s = Fake::new(&[("u1", "alice", 20 * M)]);
        let mut l = Limits::load(&a.0);
        apply(&mut l, &mut s, &[want("u1", 8 * M)]);
        l.reconfigure(&b.0);
        assert_eq!(original(&b, "u1"), Some(20 * M));
        assert_eq!(original(&a, "u1"), None);
        // The daemon's own value is still recognised after the move.
        apply(&mut l, &mut s, &[want("u1", 6 * M)]);
        assert_eq!(original(&b, "u1"), Some(20 * M));
        assert!(l.restore_all(&mut s, false).is_empty());
        assert_eq!(s.limit("u1"), 20 * M);
    }
}
