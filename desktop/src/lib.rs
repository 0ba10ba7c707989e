//! Atelier's desktop shell: a Tauri 2 app with the service inside.
//!
//! - [`service`]: `atelier serve` in-process on a loopback port, its data
//!   under the platform's app-data directory, a token of its own;
//! - [`commands`]: the IPC surface — `api` for any call of the frozen
//!   contract, typed commands for the first ones a frontend needs;
//! - [`feed`]: the progress feed forwarded to the window as Tauri events;
//! - [`envelope`]: errors cross the boundary as the frozen envelope.
//!
//! The window shows the ops console until the real frontend exists; closing
//! it drains the engine (unfinished runs resume at the next start).

pub mod commands;
pub mod envelope;
pub mod feed;
pub mod service;

pub use commands::Shell;
pub use service::EmbeddedService;

use tauri::{Manager, Runtime, WebviewUrl, WebviewWindowBuilder};

/// The shell's commands on `builder`; the app and the tests share it, so
/// both register exactly these.
pub fn builder<R: Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder.invoke_handler(tauri::generate_handler![
        commands::api,
        commands::health,
        commands::projects_list,
        commands::project_upsert,
        commands::run_trigger,
        commands::run_detail,
        commands::events_since,
        commands::feed_subscribe,
        commands::feed_unsubscribe,
    ])
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tauri(#[from] tauri::Error),
}

/// The desktop app: starts the service, opens the window, and on exit stops
/// the service gracefully.
pub fn run() -> Result<(), RunError> {
    atelier::telemetry::init();
    let app = builder(tauri::Builder::default())
        .setup(|app| {
            let app_data = app.path().app_data_dir()?;
            // The service drains on SIGTERM/SIGINT by itself; the window
            // then closes with it.
            let handle = app.handle().clone();
            let service =
                EmbeddedService::start_with(service::data_dir_in(&app_data), move || {
                    handle.exit(0)
                })?;
            // The console reads its token from the fragment, which never
            // leaves the window (not sent to the server, not logged).
            let console = format!("{}/console#token={}", service.base_url(), service.token());
            let window =
                WebviewWindowBuilder::new(app, "main", WebviewUrl::External(console.parse()?))
                    .title("Atelier")
                    .inner_size(1280.0, 840.0)
                    .build();
            app.manage(Shell::new(service));
            window?;
            Ok(())
        })
        .build(tauri::generate_context!())?;
    app.run(|handle, event| {
        if let tauri::RunEvent::Exit = event
            && let Some(shell) = handle.try_state::<Shell>()
        {
            shell.stop();
        }
    });
    Ok(())
}
