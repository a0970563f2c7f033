//! The SOQL parser must return a value or a MALFORMED_QUERY-style error for any input, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = sfsync_org::soql::parse(text) {
            assert!(!e.error_code.is_empty());
        }
    }
});
