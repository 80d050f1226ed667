//! PostgreSQL: the pool, migrations, and tenant-scoped transactions.
//!
//! Every statement that touches a tenant's rows runs inside [`tenant_tx`], which sets
//! `app.tenant_id` for the transaction only; row-level security then hides every other
//! tenant's rows. The application's own `WHERE tenant_id = …` checks stay as the first
//! wall; RLS is the second.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::error::{Error, Result};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// A pool of connections as the application role.
///
/// Prepared statements run on generic plans (`plan_cache_mode = force_generic_plan`):
/// planned once per connection instead of at every execution (re-planning the batch
/// commit cost more than executing it), and, like every plan here, driven by the keys
/// bound, not by what the statistics say of a tenant (`tests/history.rs` checks the
/// hot-path statements' generic plans). A plan is kept until an ANALYZE of its tables
/// invalidates it, so plans made on a fresh database's empty tables can scan until
/// autoanalyze first sees them (`docs/bench/notes.md`).
pub fn pool(database_url: &str, size: usize) -> Result<Pool> {
    let mut pg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| Error::Internal(format!("DATABASE_URL is invalid: {e}")))?;
    pg.options("-c plan_cache_mode=force_generic_plan");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the database pool: {e}")))
}

/// Applies pending migrations, connected as the role that owns the tables.
pub async fn migrate(owner_database_url: &str) -> Result<()> {
    let (mut client, connection) = tokio_postgres::connect(owner_database_url, NoTls).await?;
    let conn = tokio::spawn(connection);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "migration applied");
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// The newest migration version this build knows; `/readyz` checks the database has it.
pub fn latest_migration() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i32)
        .max()
        .unwrap_or(0)
}

/// Starts a transaction that sees only `tenant`'s rows.
pub async fn tenant_tx(
    client: &mut deadpool_postgres::Client,
    tenant: Uuid,
) -> Result<Transaction<'_>> {
    let tx = client.transaction().await?;
    set_tenant(&tx, tenant).await?;
    Ok(tx)
}

/// Scopes the transaction to the tenant `$1` (text).
pub const SET_TENANT_SQL: &str = "SELECT set_config('app.tenant_id', $1, true)";

/// Switches an open transaction to another tenant (batches span tenants).
pub async fn set_tenant(tx: &Transaction<'_>, tenant: Uuid) -> Result<()> {
    let stmt = tx.prepare_cached(SET_TENANT_SQL).await?;
    tx.execute(&stmt, &[&tenant.to_string()]).await?;
    Ok(())
}
