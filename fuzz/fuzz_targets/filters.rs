//! The filters of ListNodes, WatchNodes and ListBackends, as bytes off the wire: validating them
//! never panics, and a filter that is accepted reads the same after a round trip.

#![no_main]

use hangar::domain::{BackendFilter, NodeFilter, label_violations};
use hangar::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let (which, bytes) = data.split_first().unwrap_or((&0, &[]));
    if which % 2 == 0 {
        let Ok(wire) = v1::NodeFilter::decode(bytes) else { return };
        let violations = label_violations("filter.labels", &wire.labels);
        assert!(violations.len() <= hangar::domain::LABELS_MAX + 1, "violations are bounded");
        if let Ok(filter) = NodeFilter::from_proto(&wire) {
            assert_eq!(NodeFilter::from_proto(&filter.to_proto()), Ok(filter));
        }
    } else {
        let Ok(wire) = v1::BackendFilter::decode(bytes) else { return };
        if let Ok(filter) = BackendFilter::from_proto(&wire) {
            assert_eq!(BackendFilter::from_proto(&filter.to_proto()), Ok(filter));
        }
    }
});
