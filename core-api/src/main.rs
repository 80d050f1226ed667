//! The core-api binary: configuration, tracing, bind, then [`relaydesk_core::run`].

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    relaydesk_shared::telemetry::init_tracing();
    let config = match relaydesk_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("core-api: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    if let Ok(url) = std::env::var("MIGRATE_DATABASE_URL") {
        relaydesk_core::db::migrate(&url).await?;
    }
    let addr = std::env::var("CORE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {addr}: {e}"))?;
    relaydesk_core::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
