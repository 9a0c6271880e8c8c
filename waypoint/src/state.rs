//! Swappable route/policy config: readers take an `Arc` of one whole generation.

use std::sync::{Arc, RwLock};

use crate::config::WaypointConfig;

#[derive(Debug, Default)]
pub struct ConfigCell {
    current: RwLock<Arc<WaypointConfig>>,
}

impl ConfigCell {
    pub fn current(&self) -> Arc<WaypointConfig> {
        // The lock only guards an Arc swap: a poisoned lock still holds a whole generation.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, cfg: WaypointConfig) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(cfg),
        );
        drop(old);
    }
}
