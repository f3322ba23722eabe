//! [`Occupancy`]: how many unary calls and watch streams each caller holds open right now.

use super::CallerKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a caller holds open; an entry exists only while one of them is above zero, so the map
/// is as large as the set of callers with something open, and no larger.
#[derive(Debug, Default)]
struct Held {
    calls: u32,
    watches: u32,
}

/// Which of a caller's counts a [`Slot`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotKind {
    Call,
    Watch,
}

/// Per-caller counts of open calls and watches.
#[derive(Debug, Clone, Default)]
pub(super) struct Occupancy {
    held: Arc<Mutex<HashMap<CallerKey, Held>>>,
}

impl Occupancy {
    /// Takes one slot of `kind` for `key` unless it already holds `max` (0: no maximum).
    pub(super) fn try_take(&self, key: &CallerKey, kind: SlotKind, max: u32) -> Option<Slot> {
        let mut held = self.held.lock().expect("occupancy lock");
        let entry = held.entry(key.clone()).or_default();
        let count = match kind {
            SlotKind::Call => &mut entry.calls,
            SlotKind::Watch => &mut entry.watches,
        };
        // A refused caller already holds `max` >= 1, so its entry stays for a reason.
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot { occupancy: self.clone(), key: key.clone(), kind })
    }

    /// What `key` holds now: (calls, watches).
    #[cfg(test)]
    pub(super) fn held(&self, key: &CallerKey) -> (u32, u32) {
        let held = self.held.lock().expect("occupancy lock");
        held.get(key).map_or((0, 0), |h| (h.calls, h.watches))
    }

    #[cfg(test)]
    pub(super) fn callers(&self) -> usize {
        self.held.lock().expect("occupancy lock").len()
    }

    fn give_back(&self, key: &CallerKey, kind: SlotKind) {
        let mut held = self.held.lock().expect("occupancy lock");
        let Some(entry) = held.get_mut(key) else { return };
        match kind {
            SlotKind::Call => entry.calls = entry.calls.saturating_sub(1),
            SlotKind::Watch => entry.watches = entry.watches.saturating_sub(1),
        }
        if entry.calls == 0 && entry.watches == 0 {
            held.remove(key);
        }
    }
}

/// One open call or watch; dropping it gives the slot back.
#[derive(Debug)]
pub(super) struct Slot {
    occupancy: Occupancy,
    key: CallerKey,
    kind: SlotKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.occupancy.give_back(&self.key, self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_caller_and_kind_and_given_back_on_drop() {
        let occupancy = Occupancy::default();
        let (a, b) = (CallerKey::Principal("a".into()), CallerKey::Principal("b".into()));
        let first = occupancy.try_take(&a, SlotKind::Call, 2).unwrap();
        let second = occupancy.try_take(&a, SlotKind::Call, 2).unwrap();
        assert!(occupancy.try_take(&a, SlotKind::Call, 2).is_none(), "a third call is over the limit");
        let watch = occupancy.try_take(&a, SlotKind::Watch, 2).expect("watches count apart");
        let other = occupancy.try_take(&b, SlotKind::Call, 2).expect("another caller has its own count");
        assert_eq!(occupancy.held(&a), (2, 1));
        drop(first);
        assert!(occupancy.try_take(&a, SlotKind::Call, 2).is_some(), "a slot given back is free again");
        drop((second, watch, other));
        assert_eq!(occupancy.callers(), 0, "callers with nothing open take no memory");
    }

    #[test]
    fn zero_is_no_limit() {
        let occupancy = Occupancy::default();
        let key = CallerKey::Unknown;
        let slots: Vec<_> = (0..1000).map(|_| occupancy.try_take(&key, SlotKind::Watch, 0).unwrap()).collect();
        assert_eq!(occupancy.held(&key), (0, 1000));
        drop(slots);
        assert_eq!(occupancy.callers(), 0);
    }
}
