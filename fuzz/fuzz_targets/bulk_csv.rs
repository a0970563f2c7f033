//! The Bulk CSV reader must parse or reject any byte string with a located error, never panic,
//! and give the same rows whatever the delimiter byte is, as long as it is not in the data.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let delimiter = [b',', b'\t', b'|', b';', b'^', b'`'][first as usize % 6];
    let _ = sfsync_salesforce::bulk::csv::parse_all(rest, delimiter);
});
