//! The Outbound Message parser reads hostile bytes: it must return a message or an error naming
//! a place for any input, never panic, and what it accepts must hold only well-formed ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfsync_salesforce::outbound::{is_salesforce_id, parse_notifications, MAX_NOTIFICATIONS};

fuzz_target!(|data: &[u8]| {
    match parse_notifications(data) {
        Ok(m) => {
            assert!(is_salesforce_id(&m.organization_id));
            assert!(is_salesforce_id(&m.action_id));
            assert!(m.notifications.len() + m.rejected.len() <= MAX_NOTIFICATIONS);
            for n in &m.notifications {
                assert!(is_salesforce_id(&n.id) && is_salesforce_id(&n.record_id));
                assert!(!n.object.is_empty());
            }
        }
        Err(e) => assert!(!e.reason.is_empty()),
    }
});
