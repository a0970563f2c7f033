//! Describe shapes.

use sfsync_org::{describe, Schema};

#[test]
fn global_describe_shape() {
    let s = Schema::demo();
    let g = describe::global(&s, "66.0");
    assert_eq!(g["encoding"], "UTF-8");
    assert_eq!(g["maxBatchSize"], 200);
    let objs = g["sobjects"].as_array().unwrap();
    let acc = objs.iter().find(|o| o["name"] == "Account").unwrap();
    for k in [
        "label",
        "labelPlural",
        "keyPrefix",
        "custom",
        "queryable",
        "createable",
        "updateable",
        "deletable",
        "undeletable",
        "retrieveable",
        "replicateable",
        "searchable",
        "triggerable",
        "layoutable",
        "activateable",
        "customSetting",
        "deprecatedAndHidden",
        "feedEnabled",
        "mergeable",
        "hasSubtypes",
        "isSubtype",
        "isInterface",
    ] {
        assert!(acc.get(k).is_some(), "missing {k}");
    }
    assert_eq!(acc["keyPrefix"], "001");
    assert_eq!(
        acc["urls"]["sobject"],
        "/services/data/v66.0/sobjects/Account"
    );
    assert_eq!(
        acc["urls"]["describe"],
        "/services/data/v66.0/sobjects/Account/describe"
    );
    assert_eq!(
        acc["urls"]["rowTemplate"],
        "/services/data/v66.0/sobjects/Account/{ID}"
    );
    let sr = objs
        .iter()
        .find(|o| o["name"] == "Service_Request__c")
        .unwrap();
    assert_eq!(sr["custom"], true);
    assert_eq!(sr["keyPrefix"], "a00");
}

#[test]
fn object_describe_fields() {
    let s = Schema::demo();
    let d = describe::object(s.object("Account").unwrap(), &s, "66.0");
    let fields = d["fields"].as_array().unwrap();
    let f = |n: &str| {
        fields
            .iter()
            .find(|f| f["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(f("Id")["type"], "id");
    assert_eq!(f("Id")["soapType"], "tns:ID");
    assert_eq!(f("Id")["nillable"], false);
    assert_eq!(f("Id")["createable"], false);
    assert_eq!(f("Name")["soapType"], "xsd:string");
    assert_eq!(f("Name")["nillable"], false);
    assert_eq!(f("Name")["length"], 255);
    assert_eq!(f("Name")["nameField"], true);
    assert_eq!(f("BillingAddress")["type"], "address");
    assert_eq!(f("BillingAddress")["soapType"], "urn:address");
    assert_eq!(f("BillingCity")["compoundFieldName"], "BillingAddress");
    assert_eq!(f("BillingLatitude")["soapType"], "xsd:double");
    assert_eq!(f("BillingLatitude")["scale"], 15);
    assert_eq!(f("AnnualRevenue")["type"], "currency");
    assert_eq!(f("AnnualRevenue")["precision"], 18);
    assert_eq!(f("NumberOfEmployees")["soapType"], "xsd:int");
    assert_eq!(f("CreatedDate")["soapType"], "xsd:dateTime");
    assert_eq!(f("IsDeleted")["soapType"], "xsd:boolean");
    assert_eq!(f("ParentId")["referenceTo"], serde_json::json!(["Account"]));
    assert_eq!(f("ParentId")["relationshipName"], "Parent");
    assert_eq!(f("External_Id__c")["externalId"], true);
    assert_eq!(f("External_Id__c")["idLookup"], true);
    assert_eq!(f("External_Id__c")["unique"], true);
    assert_eq!(f("Revenue_Per_Employee__c")["calculated"], true);
    assert!(f("Revenue_Per_Employee__c")["calculatedFormula"]
        .as_str()
        .unwrap()
        .contains("AnnualRevenue"));
    assert_eq!(f("Revenue_Per_Employee__c")["createable"], false);
    assert_eq!(f("Description")["length"], 32000);
    assert_eq!(f("Description")["filterable"], false);
    let t = f("Industry");
    assert_eq!(t["picklistValues"][0]["active"], true);
    assert_eq!(t["picklistValues"][0]["validFor"], serde_json::Value::Null);
    for k in [
        "byteLength",
        "digits",
        "defaultedOnCreate",
        "restrictedPicklist",
        "custom",
        "sortable",
        "groupable",
        "autoNumber",
        "caseSensitive",
        "htmlFormatted",
        "encrypted",
        "deprecatedAndHidden",
    ] {
        assert!(t.get(k).is_some(), "missing {k}");
    }
    let kids = d["childRelationships"].as_array().unwrap();
    assert!(kids.iter().any(|c| c["childSObject"] == "Contact"
        && c["field"] == "AccountId"
        && c["relationshipName"] == "Contacts"));
    assert!(kids
        .iter()
        .any(|c| c["childSObject"] == "Service_Request__c"
            && c["relationshipName"] == "Service_Requests__r"));
    assert_eq!(d["recordTypeInfos"][0]["master"], true);
    let lead = describe::object(s.object("Lead").unwrap(), &s, "66.0");
    let status = lead["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Status")
        .unwrap()
        .clone();
    assert_eq!(status["restrictedPicklist"], true);
    assert_eq!(status["defaultedOnCreate"], true);
    assert!(status["picklistValues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["defaultValue"] == true));
    let case = describe::object(s.object("Case").unwrap(), &s, "66.0");
    let cn = case["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "CaseNumber")
        .unwrap()
        .clone();
    assert_eq!(
        (cn["autoNumber"].clone(), cn["createable"].clone()),
        (serde_json::json!(true), serde_json::json!(false))
    );
    let b = describe::basic(s.object("Account").unwrap(), "66.0");
    assert_eq!(b["objectDescribe"]["name"], "Account");
    assert_eq!(b["recentItems"], serde_json::json!([]));
}
