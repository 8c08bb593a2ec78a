//! Measured bench cells kept in the repository, one JSON file per cell under
//! `docs/bench/<bench>/`, so that a bench longer than one machine's life (the seeds
//! bench: some 11 hours of 2 cores) continues on the next machine from what was committed.
//! A cell is measured once; its record holds only the numbers its table shows (the
//! models and logs stay in `target/bench/<bench>/`, which a new machine does not have).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What one measured cell left: the commit and the machine it ran on, its wall seconds,
/// the 15-minute load average when it ended (above the core count: something else ran
/// beside it), and its numbers or why it failed.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    pub commit: String,
    pub machine: String,
    pub seconds: f64,
    pub load: String,
    pub outcome: Outcome<T>,
}

/// A cell's numbers, or the error that stopped it (a failed cell is shown as failed and
/// not measured again until its record is deleted).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    Measured(T),
    Failed(String),
}

impl<T> Record<T> {
    /// The record of a cell that ended now, on this machine, at `commit`, after `seconds`.
    pub fn now(commit: &str, seconds: f64, outcome: Outcome<T>) -> Self {
        Self {
            commit: commit.to_string(),
            machine: crate::table::machine(),
            seconds,
            load: load_average(),
            outcome,
        }
    }

    /// The numbers of a measured cell.
    pub fn measured(&self) -> Option<&T> {
        match &self.outcome {
            Outcome::Measured(t) => Some(t),
            Outcome::Failed(_) => None,
        }
    }
}

/// The 15-minute load average, `-` where `/proc/loadavg` cannot be read.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        .unwrap_or_else(|| "-".into())
}

/// The machines that measured the cells of a table, lettered A, B, ... in the order the
/// table first meets them, so that a cell can say where it ran (a bench that outlives one
/// machine continues on another; wall seconds compare only on the same one).
#[derive(Debug, Default)]
pub struct Machines(Vec<(String, usize)>);

impl Machines {
    /// The letter of `machine`, counting one more cell of it.
    pub fn letter(&mut self, machine: &str) -> char {
        let i = match self.0.iter().position(|(m, _)| m == machine) {
            Some(i) => i,
            None => {
                self.0.push((machine.to_string(), 0));
                self.0.len() - 1
            }
        };
        self.0[i].1 += 1;
        (b'A' + i as u8) as char
    }

    /// How many machines there are.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// `A: <machine> (n cells); B: ...`.
    pub fn legend(&self) -> String {
        let named: Vec<String> = (self.0.iter().enumerate())
            .map(|(i, (m, n))| {
                let cells = if *n == 1 { "cell" } else { "cells" };
                format!("{}: {m} ({n} {cells})", (b'A' + i as u8) as char)
            })
            .collect();
        named.join("; ")
    }
}

/// The records of one bench: `<dir>/<cell id>.json`.
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records in `dir` (created if missing); `fresh` deletes those there first.
    pub fn open(dir: &Path, fresh: bool) -> Result<Self, String> {
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The record of cell `id`, `None` when it was not measured.
    pub fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<Record<T>>, String> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the record of cell `id` (whole or not at all).
    pub fn put<T: Serialize>(&self, id: &str, record: &Record<T>) -> Result<(), String> {
        let path = self.path(id);
        let mut json = serde_json::to_string_pretty(record).map_err(|e| e.to_string())?;
        json.push('\n');
        atomic_fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Numbers {
        ppl: f64,
    }

    #[test]
    fn records_round_trip_and_fresh_forgets_them() {
        let dir = std::env::temp_dir().join(format!("xtask-records-{}", std::process::id()));
        let records = Records::open(&dir, false).unwrap();
        assert_eq!(records.get::<Numbers>("a").unwrap(), None);
        let a = Record::now("abc", 1.5, Outcome::Measured(Numbers { ppl: 12.25 }));
        let b = Record::<Numbers>::now("abc", 0.5, Outcome::Failed("boom".into()));
        records.put("a", &a).unwrap();
        records.put("b", &b).unwrap();
        let reopened = Records::open(&dir, false).unwrap();
        assert_eq!(reopened.get::<Numbers>("a").unwrap().unwrap(), a);
        assert_eq!(
            reopened.get::<Numbers>("b").unwrap().unwrap().measured(),
            None
        );
        // A record that is not one is an error naming the file, not a missing cell.
        std::fs::write(dir.join("c.json"), "{").unwrap();
        let err = reopened.get::<Numbers>("c").unwrap_err();
        assert!(err.contains("c.json"), "{err}");
        assert_eq!(a.machine, crate::table::machine());
        let fresh = Records::open(&dir, true).unwrap();
        assert_eq!(fresh.get::<Numbers>("a").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn machines_are_lettered_in_the_order_met_and_counted() {
        let mut machines = Machines::default();
        assert_eq!(machines.legend(), "");
        assert_eq!(machines.letter("x86, 2 cores"), 'A');
        assert_eq!(machines.letter("arm, 4 cores"), 'B');
        assert_eq!(machines.letter("x86, 2 cores"), 'A');
        assert_eq!(machines.count(), 2);
        assert_eq!(
            machines.legend(),
            "A: x86, 2 cores (2 cells); B: arm, 4 cores (1 cell)"
        );
    }
}
