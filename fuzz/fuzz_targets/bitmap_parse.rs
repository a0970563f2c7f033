//! The field-bitmap decoder must return field references or a typed `BitmapError` for any list
//! of entries, never panic; what it accepts must survive an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfsync_salesforce::pubsub::bitmap::{decode, encode, FieldTree};

fn tree() -> FieldTree {
    let address: Vec<String> = ["Street", "City", "State", "PostalCode", "Country"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    FieldTree::new(
        (0..40)
            .map(|i| match i {
                0 => ("ChangeEventHeader".to_string(), None),
                4 => ("BillingAddress".to_string(), Some(address.clone())),
                9 => (
                    "Name".to_string(),
                    Some(vec!["FirstName".into(), "LastName".into()]),
                ),
                i => (format!("F{i}"), None),
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let entries: Vec<&str> = text.split('\n').collect();
    let tree = tree();
    if let Ok(refs) = decode(&entries, &tree) {
        let again = decode(&encode(&refs), &tree).expect("canonical form decodes");
        let mut a = refs.clone();
        let mut b = again;
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
});
