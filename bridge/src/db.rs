//! Database access: schema migrations (diesel, embedded from `migrations/`) and the
//! tokio-postgres connection the writer uses for binary COPY, which diesel-async lacks.

use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("migration failed: {0}")]
    Migrate(Box<dyn std::error::Error + Send + Sync>),
}

/// Applies pending migrations, creating `readings` on the path `backend` names
/// ("timescaledb" or "postgres"; see migration 1). Safe when several processes start
/// at once: an advisory lock serialises them and each skips what another already applied.
pub async fn migrate(url: &str, backend: &str) -> Result<(), DbError> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| DbError::Connect {
            url: redact(url),
            reason: e.to_string(),
        })?;
    diesel::sql_query("SELECT pg_advisory_lock(7261001)")
        .execute(&mut conn)
        .await
        .map_err(|e| DbError::Migrate(Box::new(e)))?;
    diesel::sql_query("SELECT set_config('sluice.backend', $1, false)")
        .bind::<diesel::sql_types::Text, _>(backend)
        .execute(&mut conn)
        .await
        .map_err(|e| DbError::Migrate(Box::new(e)))?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(DbError::Migrate)?;
    for version in applied {
        tracing::info!(%version, "applied migration");
    }
    Ok(())
}

/// A plain tokio-postgres client; its connection task lives until the client is dropped.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| DbError::Connect {
            url: redact(url),
            reason: describe(&e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe(&e), "database connection ended");
        }
    });
    Ok(client)
}

/// A tokio-postgres error with what the server said (its own Display says only "db
/// error") or the underlying cause.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        for (what, extra) in [
            ("detail", db.detail()),
            ("hint", db.hint()),
            ("where", db.where_()),
        ] {
            if let Some(extra) = extra {
                text.push_str(&format!("; {what}: {extra}"));
            }
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The URL (or key=value string) without its password, for messages.
pub fn redact(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    // `password=` in a URL's query or a key=value string.
    let mut from = 0;
    while let Some(found) = out[from..].find("password=") {
        let start = from + found + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |n| start + n);
        out.replace_range(start..end, "********");
        from = start;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5/db"),
            "postgres://u@h:5/db"
        );
        assert_eq!(super::redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            super::redact("postgres://h/db?user=u&password=secret&x=1"),
            "postgres://h/db?user=u&password=********&x=1"
        );
        assert_eq!(
            super::redact("host=h password=secret dbname=d"),
            "host=h password=******** dbname=d"
        );
    }
}
