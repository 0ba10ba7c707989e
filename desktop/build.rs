// The app manifest names the shell's commands, so the capability in
// `capabilities/default.json` can allow exactly these and nothing else.
fn main() {
    let manifest = tauri_build::AppManifest::new().commands(&[
        "api",
        "health",
        "projects_list",
        "project_upsert",
        "run_trigger",
        "run_detail",
        "events_since",
        "feed_subscribe",
        "feed_unsubscribe",
    ]);
    if let Err(e) = tauri_build::try_build(tauri_build::Attributes::new().app_manifest(manifest)) {
        println!("cargo::error=tauri build step failed: {e:#}");
    }
}
