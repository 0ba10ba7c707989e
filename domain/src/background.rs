//! Background work of this process (export packages, syncs): what is
//! running, and a flag to stop each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// Work this process runs in the background (exports, syncs), by id, each
/// with its cancel flag.
#[derive(Default)]
pub struct Running {
    flags: Mutex<HashMap<Uuid, Arc<AtomicBool>>>,
}

impl Running {
    /// Registers `id`; its flag is raised by [`Self::cancel`].
    pub fn track(&self, id: Uuid) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut m) = self.flags.lock() {
            m.insert(id, flag.clone());
        }
        flag
    }

    pub fn done(&self, id: Uuid) {
        if let Ok(mut m) = self.flags.lock() {
            m.remove(&id);
        }
    }

    /// Registers `id` unless it is already running (`None`): one at a time.
    pub fn try_track(&self, id: Uuid) -> Option<Arc<AtomicBool>> {
        let mut m = self.flags.lock().ok()?;
        if m.contains_key(&id) {
            return None;
        }
        let flag = Arc::new(AtomicBool::new(false));
        m.insert(id, flag.clone());
        Some(flag)
    }

    pub fn is_running(&self, id: Uuid) -> bool {
        self.flags.lock().is_ok_and(|m| m.contains_key(&id))
    }

    /// `false`: not running here.
    pub fn cancel(&self, id: Uuid) -> bool {
        self.flags
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .map(|f| f.store(true, Ordering::SeqCst))
            .is_some()
    }
}
