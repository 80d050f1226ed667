//! The `edge` binary: configuration from the environment, then [`relaydesk_edge::run`]
//! until ctrl-c or SIGTERM.

use std::process::ExitCode;

use relaydesk_edge::{run, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    relaydesk_shared::telemetry::init_tracing();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = std::env::var("EDGE_ADDR").unwrap_or_else(|_| "127.0.0.1:8081".to_owned());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edge: cannot bind EDGE_ADDR {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(addr = %addr, edge_id = %config.edge_id, "edge listening");
    match run(listener, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "edge failed");
            eprintln!("edge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
