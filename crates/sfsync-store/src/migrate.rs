//! Versioned schema migrations: ordered SQL scripts, each applied once and recorded in
//! `schema_migrations (version, name, applied_at_ms)`. Applying is idempotent (already recorded
//! versions are skipped) and serialised across connections (SQLite `BEGIN IMMEDIATE`, Postgres
//! transaction-scoped advisory lock), so two processes opening one database at once are safe.
//! A database recorded at a version newer than this build knows is refused.

/// One migration: a version (strictly increasing), a name, and the SQL run in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A migration as recorded in `schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub applied_at_ms: i64,
}

/// Highest version in a migration list (0 for none).
pub fn latest(migrations: &[Migration]) -> i64 {
    migrations.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &[Migration]) {
        assert!(!list.is_empty());
        for w in list.windows(2) {
            assert!(w[0].version < w[1].version, "versions must increase");
        }
        assert_eq!(list[0].version, 1);
    }

    #[test]
    fn migration_lists_are_ordered() {
        check(crate::sqlite::MIGRATIONS);
        check(crate::postgres::MIGRATIONS);
        assert_eq!(
            latest(crate::sqlite::MIGRATIONS),
            latest(crate::postgres::MIGRATIONS)
        );
    }
}
