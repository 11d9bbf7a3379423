//! Which models stay loaded on a device: a memory budget with least-recently-used
//! eviction. A plain state machine owned by the device worker; the async side reads a
//! snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Entry<T: ?Sized> {
    /// (uid, revision) of the model the value was loaded from.
    key: (u64, u64),
    value: Arc<T>,
    bytes: u64,
    last_used: u64,
}

/// Resident models and their estimated bytes, as the async side sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub models: Vec<String>,
    pub bytes: u64,
    pub budget: u64,
}

/// Memory the device holds for its models outside the entries (the CPU kernels' cache of
/// packed frozen weights), counted against the same budget: how many bytes it holds, and
/// how to free it when models are unloaded (what it caches may belong to them).
#[derive(Clone, Copy)]
pub struct Derived {
    pub bytes: fn() -> u64,
    pub release: fn(),
}

impl Derived {
    /// Nothing outside the entries.
    pub const NONE: Self = Self {
        bytes: || 0,
        release: || {},
    };
}

pub struct Residency<T: ?Sized> {
    entries: HashMap<String, Entry<T>>,
    budget: u64,
    clock: u64,
    derived: Derived,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl<T: ?Sized> Residency<T> {
    pub fn new(budget: u64) -> Self {
        Self::with_derived(budget, Derived::NONE)
    }

    pub fn with_derived(budget: u64, derived: Derived) -> Self {
        let snapshot = Arc::new(Mutex::new(Snapshot {
            budget,
            ..Default::default()
        }));
        Self {
            entries: HashMap::new(),
            budget,
            clock: 0,
            derived,
            snapshot,
        }
    }

    pub fn snapshot_handle(&self) -> Arc<Mutex<Snapshot>> {
        self.snapshot.clone()
    }

    /// Updates the async side's snapshot (also after work that may have grown the
    /// derived memory).
    pub fn publish(&self) {
        let mut models: Vec<String> = self.entries.keys().cloned().collect();
        models.sort();
        *self.snapshot.lock().expect("residency snapshot poisoned") = Snapshot {
            models,
            bytes: self.bytes(),
            budget: self.budget,
        };
    }

    /// The entries' bytes and the derived memory's.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum::<u64>() + (self.derived.bytes)()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The loaded value if it is still the model's current version; marks it used.
    pub fn get(&mut self, name: &str, key: (u64, u64)) -> Option<Arc<T>> {
        self.clock += 1;
        let e = self.entries.get_mut(name).filter(|e| e.key == key)?;
        e.last_used = self.clock;
        Some(e.value.clone())
    }

    /// Makes room (unloading the least recently used) and keeps `value`. Returns the
    /// names unloaded, or why it cannot fit at all.
    pub fn insert(
        &mut self,
        name: &str,
        key: (u64, u64),
        value: Arc<T>,
        bytes: u64,
    ) -> Result<Vec<String>, String> {
        if bytes > self.budget {
            return Err(format!(
                "model {name:?} needs about {bytes} bytes, more than the device's memory budget of {} bytes",
                self.budget
            ));
        }
        self.entries.remove(name);
        let mut evicted = Vec::new();
        while self.bytes() + bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(n, _)| n.clone());
            let Some(oldest) = oldest else {
                // Only derived memory is left: free it once, then the value fits.
                (self.derived.release)();
                break;
            };
            self.entries.remove(&oldest);
            (self.derived.release)();
            evicted.push(oldest);
        }
        self.clock += 1;
        self.entries.insert(
            name.to_string(),
            Entry {
                key,
                value,
                bytes,
                last_used: self.clock,
            },
        );
        self.publish();
        Ok(evicted)
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let was = self.entries.remove(name).is_some();
        if was {
            (self.derived.release)();
        }
        self.publish();
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_model_makes_room() {
        let mut r = Residency::new(100);
        r.insert("a", (1, 1), Arc::new(()), 40).unwrap();
        r.insert("b", (2, 1), Arc::new(()), 40).unwrap();
        assert!(r.get("a", (1, 1)).is_some()); // a is now more recent than b
        let evicted = r.insert("c", (3, 1), Arc::new(()), 40).unwrap();
        assert_eq!(evicted, vec!["b".to_string()]);
        let snap = r.snapshot_handle().lock().unwrap().clone();
        assert_eq!(
            snap,
            Snapshot {
                models: vec!["a".into(), "c".into()],
                bytes: 80,
                budget: 100
            }
        );
    }

    #[test]
    fn a_newer_checkpoint_is_not_served_from_the_old_copy() {
        let mut r = Residency::new(100);
        r.insert("a", (1, 1), Arc::new(()), 10).unwrap();
        assert!(r.get("a", (1, 2)).is_none());
        assert!(r.get("a", (1, 1)).is_some());
    }

    #[test]
    fn a_model_larger_than_the_budget_is_refused_and_unload_frees() {
        let mut r = Residency::new(100);
        assert!(
            r.insert("huge", (1, 1), Arc::new(()), 101)
                .unwrap_err()
                .contains("memory budget")
        );
        r.insert("a", (1, 1), Arc::new(()), 10).unwrap();
        assert!(r.remove("a"));
        assert!(!r.remove("a"));
        assert_eq!(r.bytes(), 0);
    }

    static CACHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[test]
    fn derived_memory_counts_against_the_budget_and_is_freed_with_models() {
        use std::sync::atomic::Ordering;
        let derived = Derived {
            bytes: || CACHED.load(Ordering::SeqCst),
            release: || CACHED.store(0, Ordering::SeqCst),
        };
        let mut r = Residency::with_derived(100, derived);
        r.insert("a", (1, 1), Arc::new(()), 40).unwrap();
        CACHED.store(30, Ordering::SeqCst); // the network's kernels got packed
        assert_eq!(r.bytes(), 70);
        // 70 + 40 > 100: "a" goes, and with it the cache that may hold its kernels.
        let evicted = r.insert("b", (2, 1), Arc::new(()), 40).unwrap();
        assert_eq!(evicted, vec!["a".to_string()]);
        assert_eq!(r.bytes(), 40);
        assert_eq!(r.snapshot_handle().lock().unwrap().bytes, 40);
        CACHED.store(25, Ordering::SeqCst);
        assert!(r.remove("b"));
        assert_eq!(r.bytes(), 0);
    }
}
