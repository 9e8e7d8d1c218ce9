//! Single flight for async callers: one task at a time per key. Concurrent identical queries
//! queue behind the first; when it is done they find its answer in the document cache, so
//! the driver (and the probe behind it) runs once. Different keys never wait on each other.
//! Each key has a slot (`S`) that lives while someone holds or waits for the key: the
//! holder leaves what the waiters should know there (the agent: its failure).
//! A [`Ticket`] owns its hold on the key (no borrow of [`Flights`]), so it can travel with
//! work that outlives the task that asked for it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Locks<K, S> = Mutex<HashMap<K, Arc<tokio::sync::Mutex<S>>>>;

/// Per-key async locks with their slots, dropped when nobody holds or waits for them.
#[derive(Debug)]
pub struct Flights<K, S = ()> {
    locks: Arc<Locks<K, S>>,
}

impl<K, S> Default for Flights<K, S> {
    fn default() -> Self {
        Flights { locks: Arc::new(Mutex::new(HashMap::new())) }
    }
}

/// Held while a key's work runs; releases the key on drop. Derefs to the key's slot.
#[derive(Debug)]
pub struct Ticket<K: Eq + Hash + Clone, S = ()> {
    locks: Arc<Locks<K, S>>,
    key: K,
    guard: Option<OwnedMutexGuard<S>>,
}

impl<K: Eq + Hash + Clone, S: Default> Flights<K, S> {
    /// Wait until no other task holds `key`, then hold it.
    pub async fn enter(&self, key: &K) -> Ticket<K, S> {
        let lock = self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let guard = lock.lock_owned().await;
        Ticket { locks: self.locks.clone(), key: key.clone(), guard: Some(guard) }
    }

    /// Keys currently held or waited for.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<K: Eq + Hash + Clone, S> std::ops::Deref for Ticket<K, S> {
    type Target = S;

    fn deref(&self) -> &S {
        // Present until drop.
        self.guard.as_deref().expect("a ticket holds its guard until dropped")
    }
}

impl<K: Eq + Hash + Clone, S> std::ops::DerefMut for Ticket<K, S> {
    fn deref_mut(&mut self) -> &mut S {
        self.guard.as_deref_mut().expect("a ticket holds its guard until dropped")
    }
}

impl<K: Eq + Hash + Clone, S> Drop for Ticket<K, S> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Only the map still refers to the lock: nobody waits, forget it.
        if locks.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_serializes_other_keys_do_not() {
        let f = Arc::new(Flights::<u32>::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::new();
        for _ in 0..6 {
            let (f, inside, max_inside) = (f.clone(), inside.clone(), max_inside.clone());
            hs.push(tokio::spawn(async move {
                let _t = f.enter(&7).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // Another key gets in at once while key 7 is busy.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let other = tokio::time::timeout(Duration::from_millis(15), f.enter(&8)).await;
        assert!(other.is_ok(), "key 8 waited for key 7");
        drop(other);
        for h in hs {
            h.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert_eq!(f.len(), 0, "locks are forgotten when unused");
    }
}
