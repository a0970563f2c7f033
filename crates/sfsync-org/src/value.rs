//! Field values: the compact in-memory representation the org stores, Salesforce's date/time
//! wire formats, and the validation and coercion of REST JSON input and Bulk CSV text per field
//! type. Every function here is pure and never panics on user input; a rejected value yields the
//! Salesforce error code and a message that names the field and the offending value.

use std::sync::Arc;

use serde_json::Value;
use sfsync_core::SfId;

use crate::{FieldDef, FieldType, SfError};

/// A stored field value. 24 bytes; strings are shared (`Arc<str>`) so clones are cheap.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Arc<str>),
    Id(SfId),
    /// Days since 1970-01-01.
    Date(i32),
    /// Epoch milliseconds (UTC).
    DateTime(i64),
}

pub(crate) static NULL: Val = Val::Null;

impl Val {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub(crate) fn str(s: &str) -> Val {
        Val::Str(Arc::from(s))
    }

    /// The REST JSON form (datetimes as `2024-04-26T16:36:32.000+0000`).
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => Value::from(*i),
            Val::Num(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Id(id) => Value::String(id.as_str().to_string()),
            Val::Date(d) => Value::String(format_date(*d)),
            Val::DateTime(ms) => Value::String(format_datetime(*ms)),
        }
    }

    /// Numeric view (ints and doubles), for formulas and comparisons.
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Num(f) => Some(*f),
            _ => None,
        }
    }

    /// Text view for string-like values (ids included).
    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::Id(id) => Some(id.as_str()),
            _ => None,
        }
    }

    /// Converts a stored JSON value (journal / snapshot / trusted source) back, by field type,
    /// without validation beyond what is needed to parse it.
    pub(crate) fn from_stored_json(ft: FieldType, v: &Value) -> Option<Val> {
        Some(match (ft, v) {
            (_, Value::Null) => Val::Null,
            (_, Value::Bool(b)) => Val::Bool(*b),
            (FieldType::Int, Value::Number(n)) => Val::Int(n.as_i64()?),
            (_, Value::Number(n)) => Val::Num(n.as_f64()?),
            (FieldType::Id | FieldType::Reference, Value::String(s)) => {
                Val::Id(SfId::parse(s).ok()?)
            }
            (FieldType::Date, Value::String(s)) => Val::Date(parse_date(s)?),
            (FieldType::Datetime, Value::String(s)) => Val::DateTime(parse_datetime(s)?),
            (_, Value::String(s)) => Val::str(s),
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Dates and times

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

fn push_2(out: &mut String, v: u32) {
    out.push((b'0' + (v / 10 % 10) as u8) as char);
    out.push((b'0' + (v % 10) as u8) as char);
}

fn push_date(out: &mut String, days: i64) {
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        let y = y as u32;
        push_2(out, y / 100);
        push_2(out, y % 100);
    } else {
        out.push_str(&format!("{y:04}"));
    }
    out.push('-');
    push_2(out, m);
    out.push('-');
    push_2(out, d);
}

fn push_datetime(out: &mut String, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    push_date(out, days);
    out.push('T');
    let secs = (rem / 1000) as u32;
    push_2(out, secs / 3600);
    out.push(':');
    push_2(out, secs / 60 % 60);
    out.push(':');
    push_2(out, secs % 60);
    out.push('.');
    let millis = (rem % 1000) as u32;
    out.push((b'0' + (millis / 100) as u8) as char);
    push_2(out, millis % 100);
}

/// `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    let mut s = String::with_capacity(10);
    push_date(&mut s, days as i64);
    s
}

/// REST form: `2024-04-26T16:36:32.000+0000`.
pub fn format_datetime(ms: i64) -> String {
    let mut s = String::with_capacity(28);
    push_datetime(&mut s, ms);
    s.push_str("+0000");
    s
}

/// Bulk CSV form: `2018-12-10T17:50:19.000Z`.
pub fn format_datetime_z(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    push_datetime(&mut s, ms);
    s.push('Z');
    s
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in part {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn parse_ymd(b: &[u8]) -> Option<i64> {
    let y = digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let m = digits(b, 5, 2)?;
    let d = digits(b, 8, 2)?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y as i64, m) {
        return None;
    }
    Some(days_from_civil(y as i64, m, d))
}

/// Parses `YYYY-MM-DD` (a trailing `Z` is accepted, as Bulk CSV allows) into days since epoch.
pub fn parse_date(s: &str) -> Option<i32> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let b = s.as_bytes();
    if b.len() != 10 {
        return None;
    }
    i32::try_from(parse_ymd(b)?).ok()
}

/// Parses an ISO-8601 datetime as Salesforce accepts it: `2024-01-15T10:30:00Z`,
/// `…:00.000+0000`, `…+00:00`, `…-05:00`, optional fraction (1–9 digits, kept to ms), no zone =
/// UTC. Returns epoch milliseconds.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || (b[10] != b'T' && b[10] != b't' && b[10] != b' ') {
        return None;
    }
    let days = parse_ymd(&b[..10])?;
    let h = digits(b, 11, 2)?;
    let mi = digits(b, 14, 2)?;
    let sec = digits(b, 17, 2)?;
    if b[13] != b':' || b[16] != b':' || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min: i64 = match b.get(i) {
        None => 0,
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (oh, om) = match rest.len() {
                4 => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                5 if rest[2] == b':' => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                2 => (digits(rest, 0, 2)?, 0),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let v = (oh * 60 + om) as i64;
            if c == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// Coercion of REST JSON input

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_error(field: &FieldDef, v: &Value) -> SfError {
    SfError::new(
        400,
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        format!(
            "{}: value not of required type: {}",
            field.label,
            describe_value(v)
        ),
    )
    .with_fields([field.name.clone()])
}

fn truncate_for_message(s: &str) -> String {
    if s.chars().count() <= 255 {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(252).collect();
        t.push_str("...");
        t
    }
}

/// Effective maximum length of a text-like field (describe `length`, or the type's default).
pub fn max_length(field: &FieldDef) -> u32 {
    if field.length > 0 {
        return field.length;
    }
    match field.field_type {
        FieldType::Email => 80,
        FieldType::Phone => 40,
        FieldType::Multipicklist => 4099,
        FieldType::Id | FieldType::Reference => 18,
        _ => 255,
    }
}

fn check_length(field: &FieldDef, s: &str) -> Result<(), SfError> {
    let max = max_length(field) as usize;
    // Fast path: byte length bounds char count from above.
    if s.len() > max && s.chars().count() > max {
        return Err(SfError::new(
            400,
            "STRING_TOO_LONG",
            format!(
                "{}: data value too large: {} (max length={})",
                field.label,
                truncate_for_message(s),
                max
            ),
        )
        .with_fields([field.name.clone()]));
    }
    Ok(())
}

fn text_of(field: &FieldDef, v: &Value) -> Result<String, SfError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(type_error(field, v)),
    }
}

fn picklist_error(field: &FieldDef, value: &str) -> SfError {
    SfError::new(
        400,
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        format!(
            "{}: bad value for restricted picklist field: {}",
            field.label, value
        ),
    )
    .with_fields([field.name.clone()])
}

fn canonical_picklist<'a>(field: &'a FieldDef, value: &'a str) -> Result<&'a str, SfError> {
    if let Some(v) = field
        .picklist_values
        .iter()
        .find(|p| p.eq_ignore_ascii_case(value))
    {
        return Ok(v);
    }
    if field.restricted_picklist {
        return Err(picklist_error(field, value));
    }
    Ok(value)
}

fn number_of(field: &FieldDef, v: &Value) -> Result<f64, SfError> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err(type_error(field, v)),
    }
}

fn check_range(field: &FieldDef, f: f64, original: &Value) -> Result<(), SfError> {
    if field.precision > 0 {
        let int_digits = field.precision.saturating_sub(field.scale).min(30) as i32;
        if f.abs() >= 10f64.powi(int_digits) {
            return Err(SfError::new(
                400,
                "NUMBER_OUTSIDE_VALID_RANGE",
                format!(
                    "{}: value outside of valid range on numeric field: {}",
                    field.label,
                    describe_value(original)
                ),
            )
            .with_fields([field.name.clone()]));
        }
    }
    Ok(())
}

fn round_to_scale(f: f64, scale: u32) -> f64 {
    if scale == 0 || scale > 15 {
        return if scale == 0 { f.round() } else { f };
    }
    let m = 10f64.powi(scale as i32);
    let r = (f * m).round() / m;
    if r.is_finite() {
        r
    } else {
        f
    }
}

/// Validates and converts one REST JSON value for `field` into its stored form. Reference ids are
/// checked for shape only (existence is the org's business). Compound fields are rejected by the
/// caller before this is reached.
pub(crate) fn coerce(field: &FieldDef, v: &Value) -> Result<Val, SfError> {
    if v.is_null() {
        return Ok(match field.field_type {
            FieldType::Boolean => Val::Bool(false),
            _ => Val::Null,
        });
    }
    match field.field_type {
        FieldType::String | FieldType::Textarea | FieldType::Phone | FieldType::Url => {
            let s = text_of(field, v)?;
            check_length(field, &s)?;
            Ok(if s.is_empty() {
                Val::Null
            } else {
                Val::str(&s)
            })
        }
        FieldType::Email => {
            let s = text_of(field, v)?;
            if s.is_empty() {
                return Ok(Val::Null);
            }
            check_length(field, &s)?;
            let ok = match s.split_once('@') {
                Some((l, d)) => {
                    !l.is_empty() && d.contains('.') && !s.contains(char::is_whitespace)
                }
                None => false,
            };
            if !ok {
                return Err(SfError::new(
                    400,
                    "INVALID_EMAIL_ADDRESS",
                    format!("{}: invalid email address: {}", field.label, s),
                )
                .with_fields([field.name.clone()]));
            }
            Ok(Val::str(&s))
        }
        FieldType::Picklist => {
            let s = text_of(field, v)?;
            if s.is_empty() {
                if field.restricted_picklist && field.required {
                    return Err(picklist_error(field, &s));
                }
                return Ok(Val::Null);
            }
            check_length(field, &s)?;
            Ok(Val::str(canonical_picklist(field, &s)?))
        }
        FieldType::Multipicklist => {
            let s = text_of(field, v)?;
            let mut parts: Vec<&str> = Vec::new();
            for p in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let c = canonical_picklist(field, p)?;
                if !parts.contains(&c) {
                    parts.push(c);
                }
            }
            if parts.is_empty() {
                return Ok(Val::Null);
            }
            let joined = parts.join(";");
            check_length(field, &joined)?;
            Ok(Val::str(&joined))
        }
        FieldType::Boolean => match v {
            Value::Bool(b) => Ok(Val::Bool(*b)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Val::Bool(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") || s.is_empty() => {
                Ok(Val::Bool(false))
            }
            _ => Err(type_error(field, v)),
        },
        FieldType::Int => {
            if let Value::String(s) = v {
                if s.is_empty() {
                    return Ok(Val::Null);
                }
            }
            let f = number_of(field, v)?;
            if f.fract() != 0.0 || f.abs() > 2_147_483_647.0 {
                return Err(type_error(field, v));
            }
            Ok(Val::Int(f as i64))
        }
        FieldType::Double | FieldType::Currency | FieldType::Percent => {
            if let Value::String(s) = v {
                if s.is_empty() {
                    return Ok(Val::Null);
                }
            }
            let f = number_of(field, v)?;
            check_range(field, f, v)?;
            Ok(Val::Num(round_to_scale(f, field.scale)))
        }
        FieldType::Date => {
            let s = text_of(field, v)?;
            if s.is_empty() {
                return Ok(Val::Null);
            }
            parse_date(&s)
                .or_else(|| {
                    // A datetime at midnight UTC is accepted for a date, as the API does.
                    parse_datetime(&s).map(|ms| ms.div_euclid(86_400_000) as i32)
                })
                .map(Val::Date)
                .ok_or_else(|| type_error(field, v))
        }
        FieldType::Datetime => {
            let s = text_of(field, v)?;
            if s.is_empty() {
                return Ok(Val::Null);
            }
            parse_datetime(&s)
                .map(Val::DateTime)
                .ok_or_else(|| type_error(field, v))
        }
        FieldType::Id | FieldType::Reference => {
            let s = text_of(field, v)?;
            if s.is_empty() {
                return Ok(Val::Null);
            }
            SfId::parse(&s).map(Val::Id).map_err(|_| {
                SfError::new(
                    400,
                    "MALFORMED_ID",
                    format!("{}: id value of incorrect type: {}", field.label, s),
                )
                .with_fields([field.name.clone()])
            })
        }
        FieldType::Address | FieldType::Location => Err(SfError::invalid_field(
            format!(
                "Cannot write compound field {}; write its components",
                field.name
            ),
            &field.name,
        )),
    }
}

/// Validates a REST JSON value for `field` and returns its normalised JSON form (what the org
/// would store and return): e.g. datetimes become `2024-04-26T16:36:32.000+0000`, numeric strings
/// become numbers, picklist values take their canonical case.
pub fn coerce_json(field: &FieldDef, v: &Value) -> Result<Value, SfError> {
    coerce(field, v).map(|v| v.to_json())
}

/// Converts one Bulk CSV cell into the JSON value a DML operation takes. The caller handles
/// `#N/A` (set null) and the empty cell (leave unchanged / null on insert) before calling this.
pub fn parse_text_value(field: &FieldDef, text: &str) -> Result<Value, SfError> {
    let json = match field.field_type {
        FieldType::Boolean => match text.trim() {
            t if t.eq_ignore_ascii_case("true") || t == "1" || t.eq_ignore_ascii_case("yes") => {
                Value::Bool(true)
            }
            t if t.eq_ignore_ascii_case("false") || t == "0" || t.eq_ignore_ascii_case("no") => {
                Value::Bool(false)
            }
            _ => return Err(type_error(field, &Value::String(text.to_string()))),
        },
        _ => Value::String(text.to_string()),
    };
    coerce_json(field, &json)
}

/// Appends the Bulk CSV text of a JSON value (unquoted): booleans `true`/`false`, numbers without
/// exponent, REST datetimes rewritten as `2018-12-10T17:50:19.000Z`, null as nothing. Compound
/// values (objects) are written as JSON.
pub fn write_csv_value(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(f) = n.as_f64() {
                // Display for f64 never uses an exponent.
                let _ = write!(out, "{f}");
            }
        }
        Value::String(s) => {
            let b = s.as_bytes();
            if b.len() == 28 && b[10] == b'T' && b[19] == b'.' && s.ends_with("+0000") {
                out.push_str(&s[..23]);
                out.push('Z');
            } else {
                out.push_str(s);
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The Bulk CSV text of a JSON value; see [`write_csv_value`].
pub fn format_csv_value(v: &Value) -> String {
    let mut s = String::new();
    write_csv_value(v, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn civil_round_trip() {
        for d in [-800_000i64, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(days_from_civil(2024, 1, 15), 19737);
    }

    #[test]
    fn datetime_forms() {
        let want = parse_datetime("2024-04-26T16:36:32Z").unwrap();
        assert_eq!(format_datetime(want), "2024-04-26T16:36:32.000+0000");
        assert_eq!(format_datetime_z(want), "2024-04-26T16:36:32.000Z");
        assert_eq!(parse_datetime("2024-04-26T16:36:32.000+0000"), Some(want));
        assert_eq!(parse_datetime("2024-04-26T16:36:32+00:00"), Some(want));
        assert_eq!(parse_datetime("2024-04-26T11:36:32-05:00"), Some(want));
        assert_eq!(parse_datetime("2024-04-26T16:36:32.5Z"), Some(want + 500));
        assert_eq!(parse_datetime("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_datetime("2024-04-26T16:36:32Zx"), None);
        assert_eq!(parse_datetime("garbage"), None);
        assert_eq!(parse_date("2024-02-29"), Some(19782));
        assert_eq!(parse_date("2024-02-29Z"), Some(19782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(format_date(19782), "2024-02-29");
        assert_eq!(format_datetime(-1), "1969-12-31T23:59:59.999+0000");
    }

    fn f(t: FieldType) -> FieldDef {
        FieldDef::new("F__c", "F", t)
    }

    #[test]
    fn coercions() {
        assert_eq!(
            coerce(&f(FieldType::Boolean), &json!("TRUE")).unwrap(),
            Val::Bool(true)
        );
        assert_eq!(
            coerce(&f(FieldType::Int), &json!("42")).unwrap(),
            Val::Int(42)
        );
        assert_eq!(
            coerce(&f(FieldType::Double), &json!("1.5")).unwrap(),
            Val::Num(1.5)
        );
        let e = coerce(&f(FieldType::Int), &json!("abc")).unwrap_err();
        assert_eq!(e.error_code, "INVALID_TYPE_ON_FIELD_IN_RECORD");
        let e = coerce(&f(FieldType::String).length(3), &json!("abcd")).unwrap_err();
        assert_eq!(e.error_code, "STRING_TOO_LONG");
        assert!(e.message.contains("(max length=3)"), "{}", e.message);
        let p = f(FieldType::Picklist)
            .picklist(&["New", "Closed"])
            .restricted();
        assert_eq!(coerce(&p, &json!("closed")).unwrap(), Val::str("Closed"));
        assert_eq!(
            coerce(&p, &json!("Nope")).unwrap_err().error_code,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        );
        let m = f(FieldType::Multipicklist)
            .picklist(&["a", "b"])
            .restricted();
        assert_eq!(coerce(&m, &json!("b;a;b")).unwrap(), Val::str("b;a"));
        assert_eq!(
            coerce_json(&f(FieldType::Datetime), &json!("2024-01-15T10:30:00Z")).unwrap(),
            json!("2024-01-15T10:30:00.000+0000")
        );
        assert_eq!(
            coerce_json(&f(FieldType::Date), &json!("2024-01-15Z")).unwrap(),
            json!("2024-01-15")
        );
        assert_eq!(
            coerce(&f(FieldType::Email), &json!("nope"))
                .unwrap_err()
                .error_code,
            "INVALID_EMAIL_ADDRESS"
        );
        assert_eq!(
            coerce(&f(FieldType::Reference), &json!("xyz"))
                .unwrap_err()
                .error_code,
            "MALFORMED_ID"
        );
    }

    #[test]
    fn csv_text() {
        assert_eq!(
            parse_text_value(&f(FieldType::Boolean), "1").unwrap(),
            json!(true)
        );
        assert_eq!(
            parse_text_value(&f(FieldType::Currency), "12.5").unwrap(),
            json!(12.5)
        );
        assert_eq!(format_csv_value(&json!(1e20)), "100000000000000000000");
        assert_eq!(format_csv_value(&json!(null)), "");
        assert_eq!(
            format_csv_value(&json!("2018-12-10T17:50:19.000+0000")),
            "2018-12-10T17:50:19.000Z"
        );
        assert_eq!(format_csv_value(&json!(false)), "false");
    }
}
