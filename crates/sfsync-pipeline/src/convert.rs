//! Value conversion into curated column types: from decoded Avro change-event values and from
//! REST/SOQL JSON records. Pure. A value that does not fit its column is an error naming the
//! column and what arrived — never a silent coercion.

use chrono::{DateTime, NaiveDate, Utc};
use sfsync_core::FieldValue;
use sfsync_store::{ColumnType, Value};

/// Converts a decoded change-event value for a column of type `ty`.
pub fn from_avro(ty: ColumnType, v: &FieldValue) -> Result<Value, String> {
    Ok(match (ty, v) {
        (_, FieldValue::Null) => Value::Null,
        (ColumnType::Boolean, FieldValue::Bool(b)) => Value::Bool(*b),
        (ColumnType::Integer, FieldValue::Int(i)) => Value::Int(*i as i64),
        (ColumnType::Integer, FieldValue::Long(i)) => Value::Int(*i),
        (ColumnType::Integer, FieldValue::Double(d)) if d.fract() == 0.0 => Value::Int(*d as i64),
        (ColumnType::Real, FieldValue::Double(d)) => Value::Real(*d),
        (ColumnType::Real, FieldValue::Float(d)) => Value::Real(*d as f64),
        (ColumnType::Real, FieldValue::Int(i)) => Value::Real(*i as f64),
        (ColumnType::Real, FieldValue::Long(i)) => Value::Real(*i as f64),
        (ColumnType::Date, FieldValue::Int(days)) => Value::Date(*days),
        (ColumnType::Date, FieldValue::String(s)) => Value::Date(parse_date(s)?),
        (ColumnType::Timestamp, FieldValue::Long(ms)) => Value::Timestamp(*ms),
        (ColumnType::Timestamp, FieldValue::String(s)) => Value::Timestamp(parse_datetime(s)?),
        (ColumnType::Text, FieldValue::String(s) | FieldValue::Enum(s)) => Value::Text(s.clone()),
        (ColumnType::Text, FieldValue::Bool(b)) => Value::Text(b.to_string()),
        (ColumnType::Text, FieldValue::Int(i)) => Value::Text(i.to_string()),
        (ColumnType::Text, FieldValue::Long(i)) => Value::Text(i.to_string()),
        (ColumnType::Text, FieldValue::Double(d)) => Value::Text(d.to_string()),
        (ColumnType::Text, FieldValue::Array(items)) => {
            // Multi-select values: Salesforce's own `;` join.
            let parts: Result<Vec<String>, String> = items
                .iter()
                .map(|i| match i {
                    FieldValue::String(s) | FieldValue::Enum(s) => Ok(s.clone()),
                    other => Err(format!("an array of {}", kind(other))),
                })
                .collect();
            Value::Text(parts?.join(";"))
        }
        (ty, other) => {
            return Err(format!(
                "a {} value does not fit a {ty:?} column",
                kind(other)
            ))
        }
    })
}

/// Converts a REST/SOQL JSON value for a column of type `ty`.
pub fn from_json(ty: ColumnType, v: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    Ok(match (ty, v) {
        (_, J::Null) => Value::Null,
        (ColumnType::Boolean, J::Bool(b)) => Value::Bool(*b),
        (ColumnType::Integer, J::Number(n)) => Value::Int(
            n.as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| format!("{n} is not an integer"))?,
        ),
        (ColumnType::Real, J::Number(n)) => {
            Value::Real(n.as_f64().ok_or_else(|| format!("{n} is not a number"))?)
        }
        (ColumnType::Date, J::String(s)) => Value::Date(parse_date(s)?),
        (ColumnType::Timestamp, J::String(s)) => Value::Timestamp(parse_datetime(s)?),
        (ColumnType::Text, J::String(s)) => Value::Text(s.clone()),
        (ColumnType::Text, J::Number(n)) => Value::Text(n.to_string()),
        (ColumnType::Text, J::Bool(b)) => Value::Text(b.to_string()),
        (ty, other) => return Err(format!("JSON {other} does not fit a {ty:?} column")),
    })
}

fn kind(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Null => "null",
        FieldValue::Bool(_) => "boolean",
        FieldValue::Int(_) => "int",
        FieldValue::Long(_) => "long",
        FieldValue::Float(_) => "float",
        FieldValue::Double(_) => "double",
        FieldValue::String(_) => "string",
        FieldValue::Bytes(_) => "bytes",
        FieldValue::Enum(_) => "enum",
        FieldValue::Array(_) => "array",
        FieldValue::Map(_) => "map",
        FieldValue::Record(_) => "record",
        FieldValue::Diff { .. } => "diff",
    }
}

/// Converts a Bulk API 2.0 CSV cell for a column of type `ty`. An empty cell is null (Bulk
/// query results write null as an empty field).
pub fn from_csv(ty: ColumnType, cell: &str) -> Result<Value, String> {
    if cell.is_empty() {
        return Ok(Value::Null);
    }
    Ok(match ty {
        ColumnType::Text => Value::Text(cell.to_string()),
        ColumnType::Boolean => match cell {
            "true" | "TRUE" | "True" => Value::Bool(true),
            "false" | "FALSE" | "False" => Value::Bool(false),
            other => return Err(format!("'{other}' is not a boolean")),
        },
        ColumnType::Integer => match cell.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => match cell.parse::<f64>() {
                Ok(f) if f.fract() == 0.0 && f.is_finite() => Value::Int(f as i64),
                _ => return Err(format!("'{cell}' is not an integer")),
            },
        },
        ColumnType::Real => Value::Real(
            cell.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("'{cell}' is not a number"))?,
        ),
        ColumnType::Date => Value::Date(parse_date(cell)?),
        ColumnType::Timestamp => Value::Timestamp(parse_datetime(cell)?),
    })
}

/// `YYYY-MM-DD` → days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<i32, String> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("date '{s}': {e}"))?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    Ok((d - epoch).num_days() as i32)
}

/// Salesforce datetimes (`2026-11-21T09:30:00.000+0000`, RFC 3339 with `Z` or an offset) →
/// epoch milliseconds.
pub fn parse_datetime(s: &str) -> Result<i64, String> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&Utc).timestamp_millis());
    }
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .map(|d| d.with_timezone(&Utc).timestamp_millis())
        .map_err(|e| format!("datetime '{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_fit_their_columns_or_say_why() {
        assert_eq!(from_csv(ColumnType::Text, "").unwrap(), Value::Null);
        assert_eq!(from_csv(ColumnType::Integer, "").unwrap(), Value::Null);
        assert_eq!(
            from_csv(ColumnType::Boolean, "true").unwrap(),
            Value::Bool(true)
        );
        assert_eq!(from_csv(ColumnType::Integer, "42").unwrap(), Value::Int(42));
        assert_eq!(
            from_csv(ColumnType::Integer, "42.0").unwrap(),
            Value::Int(42)
        );
        assert_eq!(from_csv(ColumnType::Real, "1.5").unwrap(), Value::Real(1.5));
        assert_eq!(
            from_csv(ColumnType::Date, "1970-01-04").unwrap(),
            Value::Date(3)
        );
        assert_eq!(
            from_csv(ColumnType::Timestamp, "1970-01-01T00:00:01.500Z").unwrap(),
            Value::Timestamp(1500)
        );
        assert_eq!(
            from_csv(ColumnType::Text, "a,\"b\"").unwrap(),
            Value::Text("a,\"b\"".into())
        );
        assert!(from_csv(ColumnType::Integer, "4.5")
            .unwrap_err()
            .contains("'4.5'"));
        assert!(from_csv(ColumnType::Boolean, "yes")
            .unwrap_err()
            .contains("'yes'"));
        assert!(from_csv(ColumnType::Real, "NaN").is_err());
        assert!(from_csv(ColumnType::Date, "21/11/2026").is_err());
    }

    #[test]
    fn avro_values_fit_their_columns() {
        assert_eq!(
            from_avro(ColumnType::Date, &FieldValue::Int(3)).unwrap(),
            Value::Date(3)
        );
        assert_eq!(
            from_avro(ColumnType::Timestamp, &FieldValue::Long(5)).unwrap(),
            Value::Timestamp(5)
        );
        assert_eq!(
            from_avro(ColumnType::Real, &FieldValue::Double(1.5)).unwrap(),
            Value::Real(1.5)
        );
        assert_eq!(
            from_avro(
                ColumnType::Text,
                &FieldValue::Array(vec![
                    FieldValue::String("a".into()),
                    FieldValue::String("b".into())
                ])
            )
            .unwrap(),
            Value::Text("a;b".into())
        );
        let e = from_avro(ColumnType::Boolean, &FieldValue::String("x".into())).unwrap_err();
        assert!(e.contains("string") && e.contains("Boolean"), "{e}");
    }

    #[test]
    fn json_values_fit_their_columns() {
        assert_eq!(
            from_json(
                ColumnType::Timestamp,
                &json!("2026-11-21T09:30:00.000+0000")
            )
            .unwrap(),
            Value::Timestamp(1_795_253_400_000)
        );
        assert_eq!(
            from_json(ColumnType::Timestamp, &json!("2026-11-21T09:30:00.000Z")).unwrap(),
            Value::Timestamp(1_795_253_400_000)
        );
        assert_eq!(
            from_json(ColumnType::Date, &json!("1970-01-03")).unwrap(),
            Value::Date(2)
        );
        assert_eq!(
            from_json(ColumnType::Integer, &json!(4.0)).unwrap(),
            Value::Int(4)
        );
        assert!(from_json(ColumnType::Date, &json!("21/11/2026")).is_err());
        assert!(from_json(ColumnType::Boolean, &json!("yes")).is_err());
    }
}
