//! `rollouts.json` in the data dir: every service's rollout history, so that `orch rollout
//! history` still shows the earlier rollouts after orch restarts. Written whole after every
//! change of a rollout (a temporary file, synced, then renamed over the old one, so a crash
//! leaves the old history or the new, never half of one), read once at start. The specs
//! the rollouts ran are not kept: a rollout of an earlier run of orch can be read, but not
//! rolled back to, unless its revision is the one orch runs again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kit::orch_api::Rollout;
use serde::{Deserialize, Serialize};

use super::rollout::{Book, Entry, History};

/// The file's name in the data dir.
pub const FILE: &str = "rollouts.json";

#[derive(Debug, thiserror::Error)]
pub enum RolloutFileError {
    #[error("{path}: cannot read the rollout history: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a rollout history ({source})")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: cannot write the rollout history: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    services: BTreeMap<String, StoredHistory>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredHistory {
    last_good: Option<u32>,
    rollouts: Vec<StoredRollout>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRollout {
    #[serde(flatten)]
    view: Rollout,
    /// Which rollout it undid, if it was a rollback or an undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restores: Option<u32>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The history an earlier orch left in `data_dir` (none: an empty book). Its entries have
/// no spec, and their `started` is `now`.
pub fn load(data_dir: &Path, now: Instant) -> Result<Book, RolloutFileError> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Book::new()),
        Err(source) => return Err(RolloutFileError::Read { path, source }),
    };
    let stored: Stored = serde_json::from_str(&text).map_err(|source| RolloutFileError::Parse { path, source })?;
    let book = stored
        .services
        .into_iter()
        .map(|(name, h)| {
            let entries = h
                .rollouts
                .into_iter()
                .map(|r| Entry {
                    revision: u64::from_str_radix(&r.view.revision, 16).unwrap_or(0),
                    // Known again if orch runs its revision (see `start_rollouts`).
                    template: 0,
                    view: r.view,
                    spec: None,
                    started: now,
                    restores: r.restores,
                    at_start: false,
                })
                .collect();
            (name, History { entries, last_good: h.last_good, pinned: false })
        })
        .collect();
    Ok(book)
}

/// Writes `book` to `data_dir` atomically: a temporary file, synced, renamed over the old.
pub fn save(data_dir: &Path, book: &Book) -> Result<(), RolloutFileError> {
    let stored = Stored {
        services: book
            .iter()
            .map(|(name, h)| {
                let rollouts =
                    h.entries.iter().map(|e| StoredRollout { view: e.view.clone(), restores: e.restores }).collect();
                (name.clone(), StoredHistory { last_good: h.last_good, rollouts })
            })
            .collect(),
    };
    let path = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| RolloutFileError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::rollout::{KEEP, Verdict};

    #[test]
    fn a_saved_history_reads_back_without_its_specs_and_bounded() {
        let m = crate::manifest::parse(
            Path::new("/m.yaml"),
            "apiVersion: orch/v1\nkind: Cluster\nmetadata: { name: t }\nspec:\n  services:\n    - { name: web, component: registry }\n",
        )
        .unwrap();
        let spec = &m.services[0];
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), Instant::now()).unwrap().is_empty(), "no file: no history");

        let mut book = Book::new();
        let h = book.entry("web".to_owned()).or_default();
        for n in 1..=KEEP as u64 + 3 {
            h.begin(spec, (0xabc0 + n, n), format!("change {n}"), None, Instant::now());
            h.settle(&Verdict::Complete { ready: 1 });
        }
        h.begin(spec, (0xff, 1), "undo to #5".into(), Some(5), Instant::now());
        save(dir.path(), &book).unwrap();
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());

        let back = load(dir.path(), Instant::now()).unwrap();
        let (before, after) = (&book["web"], &back["web"]);
        assert_eq!(after.entries.len(), KEEP);
        assert_eq!(after.view("web"), before.view("web"));
        let last = after.latest().unwrap();
        assert_eq!((last.revision, last.restores, last.spec.is_none()), (0xff, Some(5), true));
        assert_eq!(after.entries[0].revision, 0xabc0 + 5);

        std::fs::write(path(dir.path()), "{not json").unwrap();
        let err = load(dir.path(), Instant::now()).unwrap_err().to_string();
        assert!(err.ends_with("not a rollout history (key must be a string at line 1 column 2)"), "{err}");
    }
}
