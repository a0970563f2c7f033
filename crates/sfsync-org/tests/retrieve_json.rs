//! The direct JSON path for single-record reads renders exactly what serialising the `retrieve`
//! map renders, for every object, with and without a field list (compound, formula, dates,
//! references, nulls).

use sfsync_core::SfId;
use sfsync_org::{ApiKind, CallContext, Org, OrgConfig, Schema};

#[test]
fn retrieve_json_bytes_equal_the_map_rendering() {
    let org = Org::new(
        Schema::demo(),
        OrgConfig {
            org_id: SfId::from_parts("00D", 7),
            admin_username: "admin@example.org".into(),
        },
    );
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Admin,
        api_version: "66.0".into(),
        client: None,
    };
    let mut checked = 0;
    for object in [
        "Account",
        "Contact",
        "Lead",
        "Opportunity",
        "Case",
        "Service_Request__c",
        "Payment__c",
    ] {
        let ids = org.seed(&ctx, object, 20, 3).unwrap();
        for id in &ids {
            let id = id.to_string();
            let map = org.retrieve(object, &id, None, "66.0").unwrap();
            let expected = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap();
            assert_eq!(
                org.retrieve_json(object, &id, None, "66.0").unwrap(),
                expected
            );
            let fields: Vec<String> = ["Id", "Name", "CreatedDate", "SystemModstamp"]
                .iter()
                .map(|s| s.to_string())
                .filter(|f| org.schema().object(object).unwrap().field(f).is_some())
                .collect();
            let map = org.retrieve(object, &id, Some(&fields), "62.0").unwrap();
            let expected = serde_json::to_vec(&serde_json::Value::Object(map)).unwrap();
            assert_eq!(
                org.retrieve_json(object, &id, Some(&fields), "62.0")
                    .unwrap(),
                expected
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 140);
    let bad = org.retrieve_json("Account", "001000000000000AAA", None, "66.0");
    assert_eq!(bad.unwrap_err().error_code, "NOT_FOUND");
}
