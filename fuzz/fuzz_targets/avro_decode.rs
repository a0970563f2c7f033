//! The Pub/Sub Avro decoder must return a `Change` or a typed `DecodeError` for any payload,
//! never panic, never loop, never allocate without bound. The first byte picks the writer
//! schema (a CDC event with a compound field, or a schema with arrays, maps, enums and fixed).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sfsync_salesforce::pubsub::avro::{ChangeSchema, Schema};

const CDC: &str = r#"{"type":"record","name":"AccountChangeEvent","namespace":"com.sforce.eventbus","fields":[
 {"name":"ChangeEventHeader","type":{"type":"record","name":"ChangeEventHeader","fields":[
  {"name":"entityName","type":"string"},{"name":"recordIds","type":{"type":"array","items":"string"}},
  {"name":"changeType","type":{"type":"enum","name":"ChangeType","symbols":["CREATE","UPDATE","DELETE","UNDELETE","GAP_CREATE","GAP_UPDATE","GAP_DELETE","GAP_UNDELETE","GAP_OVERFLOW"]}},
  {"name":"changeOrigin","type":"string"},{"name":"transactionKey","type":"string"},
  {"name":"sequenceNumber","type":"int"},{"name":"commitTimestamp","type":"long"},
  {"name":"commitNumber","type":"long"},{"name":"commitUser","type":"string"},
  {"name":"nulledFields","type":{"type":"array","items":"string"}},
  {"name":"diffFields","type":{"type":"array","items":"string"}},
  {"name":"changedFields","type":{"type":"array","items":"string"}}]}},
 {"name":"Name","type":["null","string"],"default":null},
 {"name":"BillingAddress","type":["null",{"type":"record","name":"Address","fields":[
  {"name":"Street","type":["null","string"]},{"name":"City","type":["null","string"]},
  {"name":"Latitude","type":["null","double"]}]}],"default":null},
 {"name":"Phone","type":["null","string"],"default":null},
 {"name":"ShippingAddress","type":["null","Address"],"default":null},
 {"name":"NumberOfEmployees","type":["null","int"],"default":null},
 {"name":"IsActive","type":["null","boolean"],"default":null}]}"#;

const MIXED: &str = r#"{"type":"record","name":"M","fields":[
 {"name":"a","type":{"type":"array","items":["null","long",{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}]}},
 {"name":"m","type":{"type":"map","values":{"type":"enum","name":"E","symbols":["X","Y"]}}},
 {"name":"f","type":{"type":"fixed","name":"F","size":3}},
 {"name":"b","type":"bytes"},{"name":"x","type":"float"},{"name":"d","type":"double"}]}"#;

fn schemas() -> &'static (ChangeSchema, Schema) {
    static S: OnceLock<(ChangeSchema, Schema)> = OnceLock::new();
    S.get_or_init(|| {
        (
            ChangeSchema::parse("fuzzCdc", CDC).expect("CDC schema compiles"),
            Schema::parse("fuzzMixed", MIXED).expect("mixed schema compiles"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (cdc, mixed) = schemas();
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    if pick & 1 == 0 {
        let full = cdc.decode(payload, sfsync_core::ReplayId::default());
        let header = cdc.decode_header(payload, sfsync_core::ReplayId::default());
        // The header-only decode rejects exactly what the full decode rejects.
        assert_eq!(
            full.as_ref().err().map(|e| e.to_string()),
            header.as_ref().err().map(|e| e.to_string())
        );
        if let Err(e) = full {
            assert_eq!(e.schema_id(), "fuzzCdc");
            assert!(!e.to_string().is_empty());
        }
    } else if let Err(e) = mixed.decode_value(payload) {
        assert_eq!(e.schema_id(), "fuzzMixed");
    }
});
