//! Conversions between `chrono`/`std` times and the protobuf well-known types.

use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;

pub fn timestamp_to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// `None` for a timestamp outside chrono's range (a malformed message).
pub fn timestamp_from_proto(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.seconds, u32::try_from(t.nanos).ok()?).single()
}

pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// `None` for a negative or malformed duration.
pub fn duration_from_proto(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_with_nanoseconds() {
        let t = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(timestamp_from_proto(&timestamp_to_proto(t)), Some(t));
    }

    #[test]
    fn negative_durations_are_rejected() {
        let d = prost_types::Duration { seconds: -1, nanos: 0 };
        assert_eq!(duration_from_proto(&d), None);
        let ok = duration_to_proto(Duration::from_millis(1500));
        assert_eq!(duration_from_proto(&ok), Some(Duration::from_millis(1500)));
    }
}
