//! Filtered, ordered, keyset-paged row queries ([`RowStore`]) on SQLite and Postgres: every
//! comparison operator with OData's null semantics, string functions, and/or/not, sort keys with
//! nulls, a keyset cursor that neither skips nor repeats rows while rows are inserted between
//! pages, counts, deleted rows, PII opened only on request, the outbox table, and a hostile
//! literal that stays a value.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use sfsync_core::RecordVersion;
use sfsync_store::*;

fn model() -> ObjectModel {
    let col = |name: &str, ty, pii| ColumnDef {
        name: name.into(),
        field: name.into(),
        ty,
        pii,
    };
    ObjectModel {
        object: "Account".into(),
        table: "sf_account".into(),
        columns: vec![
            col("id", ColumnType::Text, false),
            col("name", ColumnType::Text, false),
            col("employees", ColumnType::Integer, false),
            col("revenue", ColumnType::Real, false),
            col("active", ColumnType::Boolean, false),
            col("founded", ColumnType::Date, false),
            col("created", ColumnType::Timestamp, false),
            col("phone", ColumnType::Text, true),
        ],
        history: None,
    }
}

const T0: i64 = 1_790_000_000_000;

/// Row `n`: employees null every 4th, name `Acct nn`, one deleted (n = 7).
fn row(n: i64) -> CurrentRow {
    let mut values = BTreeMap::new();
    values.insert("name".into(), Value::Text(format!("Acct {n:02}")));
    if n % 4 != 0 {
        values.insert("employees".into(), Value::Int(n % 6));
    }
    values.insert("revenue".into(), Value::Real(n as f64 * 1.5));
    values.insert("active".into(), Value::Bool(n % 2 == 0));
    values.insert("founded".into(), Value::Date(n as i32 * 10));
    values.insert("created".into(), Value::Timestamp(T0 + n * 1000));
    values.insert("phone".into(), Value::Text(format!("555-{n:02}")));
    let version = RecordVersion {
        commit_timestamp: T0 + n,
        commit_number: n,
        sequence_number: 1,
    };
    CurrentRow {
        id: format!("001{n:015}"),
        values,
        meta: SyncMeta {
            version,
            change_type: "CREATE".into(),
            source: ChangeSource::Cdc,
            transaction_key: format!("tx{n}"),
            replay_id: None,
            run_id: "test".into(),
            applied_at_ms: T0 + n + 5,
            origin_client: None,
        },
        deleted: n == 7,
        base_version: version,
        field_versions: None,
        history_version: None,
        partial: false,
    }
}

async fn load(s: &dyn Store, ns: impl Iterator<Item = i64>) {
    s.ensure_model(&model()).await.unwrap();
    let batch = CuratedBatch {
        rows: ns.map(|n| ("Account".to_string(), row(n))).collect(),
        ..Default::default()
    };
    s.commit_curated("t", None, &batch).await.unwrap();
}

fn table() -> QueryTable {
    QueryTable::Curated("Account".into())
}

fn names(rows: &[QueryRow]) -> Vec<String> {
    rows.iter()
        .map(|r| match r.values.get("name") {
            Some(Value::Text(s)) => s.clone(),
            other => panic!("no name: {other:?}"),
        })
        .collect()
}

/// Names of the live rows among 0..30 matching `f`, ordered by id (= by n).
fn expect(f: impl Fn(i64) -> bool) -> Vec<String> {
    (0..30)
        .filter(|n| *n != 7 && f(*n))
        .map(|n| format!("Acct {n:02}"))
        .collect()
}

fn cmp(column: &str, op: CmpOp, v: Value) -> RowFilter {
    RowFilter::Cmp {
        left: Operand::Column(column.into()),
        op,
        right: Operand::Value(v),
    }
}

async fn run(s: &dyn Store, filter: RowFilter) -> Vec<String> {
    let mut q = RowQuery::new(table(), 100);
    q.filter = Some(filter.clone());
    let rows = s.query_rows(&q).await.unwrap();
    let n = s.count_rows(&table(), Some(&filter), false).await.unwrap();
    assert_eq!(n as usize, rows.len(), "count agrees for {filter:?}");
    names(&rows)
}

async fn check(s: &dyn Store) {
    load(s, 0..30).await;
    let emp = |n: i64| (n % 4 != 0).then_some(n % 6);
    // Comparisons, null semantics: a null never compares, except eq/ne null.
    assert_eq!(
        run(s, cmp("employees", CmpOp::Eq, Value::Int(3))).await,
        expect(|n| emp(n) == Some(3))
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Ne, Value::Int(3))).await,
        expect(|n| emp(n) != Some(3))
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Gt, Value::Int(3))).await,
        expect(|n| emp(n).is_some_and(|e| e > 3))
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Ge, Value::Int(3))).await,
        expect(|n| emp(n).is_some_and(|e| e >= 3))
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Lt, Value::Int(3))).await,
        expect(|n| emp(n).is_some_and(|e| e < 3))
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Le, Value::Int(3))).await,
        expect(|n| emp(n).is_some_and(|e| e <= 3))
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Eq, Value::Null)).await,
        expect(|n| emp(n).is_none())
    );
    assert_eq!(
        run(s, cmp("employees", CmpOp::Ne, Value::Null)).await,
        expect(|n| emp(n).is_some())
    );
    assert_eq!(
        run(
            s,
            RowFilter::Not(Box::new(cmp("employees", CmpOp::Gt, Value::Int(3))))
        )
        .await,
        expect(|n| emp(n).is_none_or(|e| e <= 3)),
        "not of a comparison with null is true"
    );
    // Types: real (integer literal), boolean, date, timestamp.
    assert_eq!(
        run(s, cmp("revenue", CmpOp::Ge, Value::Int(30))).await,
        expect(|n| n as f64 * 1.5 >= 30.0)
    );
    assert_eq!(
        run(s, cmp("active", CmpOp::Eq, Value::Bool(true))).await,
        expect(|n| n % 2 == 0)
    );
    assert_eq!(
        run(s, cmp("founded", CmpOp::Lt, Value::Date(50))).await,
        expect(|n| n * 10 < 50)
    );
    assert_eq!(
        run(s, cmp("created", CmpOp::Gt, Value::Timestamp(T0 + 25_000))).await,
        expect(|n| n > 25)
    );
    // Strings, logic.
    let starts = RowFilter::Str {
        func: StrFn::StartsWith,
        column: "name".into(),
        value: "Acct 1".into(),
    };
    let contains = RowFilter::Str {
        func: StrFn::Contains,
        column: "name".into(),
        value: "5".into(),
    };
    assert_eq!(
        run(s, starts.clone()).await,
        expect(|n| (10..20).contains(&n))
    );
    assert_eq!(run(s, contains.clone()).await, expect(|n| n % 10 == 5));
    assert_eq!(
        run(
            s,
            RowFilter::Or(Box::new(starts.clone()), Box::new(contains.clone()))
        )
        .await,
        expect(|n| (10..20).contains(&n) || n % 10 == 5)
    );
    assert_eq!(
        run(s, starts.clone().and(RowFilter::Not(Box::new(contains)))).await,
        expect(|n| (10..20).contains(&n) && n % 10 != 5)
    );
    // A hostile literal is a value; LIKE wildcards are plain characters.
    assert!(run(
        s,
        RowFilter::eq("name", Value::Text("x'; DROP TABLE sf_account; --".into()))
    )
    .await
    .is_empty());
    assert!(run(
        s,
        RowFilter::Str {
            func: StrFn::Contains,
            column: "name".into(),
            value: "%".into()
        }
    )
    .await
    .is_empty());
    assert_eq!(s.count_rows(&table(), None, false).await.unwrap(), 29);
    assert_eq!(
        s.count_rows(&table(), None, true).await.unwrap(),
        30,
        "deleted rows on request"
    );
    // Column against column.
    let same = RowFilter::Cmp {
        left: Operand::Column("employees".into()),
        op: CmpOp::Lt,
        right: Operand::Column("revenue".into()),
    };
    assert_eq!(
        run(s, same).await,
        expect(|n| emp(n).is_some_and(|e| (e as f64) < n as f64 * 1.5))
    );
    // Refusals name the column.
    let mut q = RowQuery::new(table(), 10);
    q.filter = Some(RowFilter::eq("phone", Value::Text("555-01".into())));
    let e = s.query_rows(&q).await.unwrap_err().to_string();
    assert!(e.contains("'phone'") && e.contains("PII"), "{e}");
    q.filter = Some(RowFilter::eq("nope", Value::Int(1)));
    assert!(s
        .query_rows(&q)
        .await
        .unwrap_err()
        .to_string()
        .contains("'nope' is not a column"));

    // PII: absent unless opened.
    let mut q = RowQuery::new(table(), 1);
    let r = s.query_rows(&q).await.unwrap();
    assert_eq!(r[0].values.get("phone"), None);
    assert!(r[0].meta.is_some());
    q.open_pii = true;
    let r = s.query_rows(&q).await.unwrap();
    assert_eq!(
        r[0].values.get("phone"),
        Some(&Value::Text("555-00".into()))
    );

    // Keyset paging by employees desc (nulls last), then id; rows inserted between pages that
    // sort before the cursor are not seen, the others are, and nothing repeats.
    let mut q = RowQuery::new(table(), 4);
    q.order = vec![OrderKey {
        column: "employees".into(),
        desc: true,
    }];
    let order = q.effective_order();
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let rows = s.query_rows(&q).await.unwrap();
        pages += 1;
        if pages == 3 {
            // Ids 30..36: employees n % 6 (some before, some after the cursor).
            load(s, 30..36).await;
        }
        let Some(last) = rows.last() else { break };
        q.after = Some(last.key_values(&order));
        seen.extend(names(&rows));
        if rows.len() < 4 {
            break;
        }
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no row twice: {seen:?}");
    let mut want_order: Vec<i64> = (0..30).filter(|n| *n != 7).collect();
    let key = |n: i64| (std::cmp::Reverse(emp(n).map_or(-1, |e| e)), n);
    want_order.sort_by_key(|n| key(*n));
    for n in &want_order {
        assert!(
            seen.contains(&format!("Acct {n:02}")),
            "row {n} skipped: {seen:?}"
        );
    }
    // The original rows keep their relative order.
    let pos: Vec<usize> = want_order
        .iter()
        .map(|n| {
            seen.iter()
                .position(|x| *x == format!("Acct {n:02}"))
                .unwrap()
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "order: {seen:?}");

    // The outbox table.
    let mut q = RowQuery::new(QueryTable::Outbox, 10);
    q.filter = Some(RowFilter::eq("source_system", Value::Text("erp".into())));
    assert!(s.query_rows(&q).await.unwrap().is_empty());
    assert_eq!(
        s.count_rows(&QueryTable::Outbox, None, false)
            .await
            .unwrap(),
        0
    );
    assert!(s.curated_model("Account").is_some());
    assert!(s.curated_model("Nope").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queries() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteChangeLog::open(dir.path().join("wh.db"))
        .await
        .unwrap();
    s.set_keyring(Some(Arc::new(Keyring::new("k1", [7; 32]))));
    check(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queries() {
    let (config, _server) = support::pg::fresh_schema().await;
    let s = PostgresChangeLog::connect_with(&config).await.unwrap();
    s.set_keyring(Some(Arc::new(Keyring::new("k1", [7; 32]))));
    check(&s).await;
}
