//! Process shutdown: one token, cancelled on SIGTERM or SIGINT, that every
//! server and background task of the process watches.

pub use tokio_util::sync::CancellationToken as ShutdownToken;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token that is cancelled when the process is asked to stop.
pub fn on_signal() -> ShutdownToken {
    let token = ShutdownToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    token
}
