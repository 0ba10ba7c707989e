//! Route registration. Every handler carries `#[utoipa::path]`, and is mounted
//! only through [`configure`], so the OpenAPI document and the mounted routes
//! are the same list.

mod admin;
mod asset_links;
mod assets;
mod auth;
mod bootstrap;
mod catalog;
pub mod console;
mod copilot;
mod exports;
mod feed;
mod health;
mod ledger;
mod metrics;
mod projects;
mod provider_accounts;
mod queue;
mod reference_items;
mod run_control;
mod runs;
mod secrets;
mod storage;
mod sync;
mod voice;
mod webhooks;

/// Every route, once: registered on a plain actix `ServiceConfig` by the
/// workers ([`configure`]), and on utoipa's to generate the API document
/// ([`configure_documented`], once per process).
macro_rules! every_route {
    ($cfg:expr) => {
        $cfg.service(health::health)
            .service(health::openapi_json)
            .service(auth::create_token)
            .service(auth::list_tokens)
            .service(auth::revoke_token)
            .service(projects::list_projects)
            .service(projects::upsert_project)
            .service(projects::get_project)
            .service(storage::get_storage)
            .service(storage::update_local)
            .service(storage::update_s3)
            .service(runs::trigger_run)
            .service(runs::validate_config)
            .service(runs::list_runs)
            .service(runs::get_run)
            .service(runs::list_jobs)
            .service(runs::list_events)
            .service(run_control::cancel_run)
            .service(run_control::retry_run)
            .service(run_control::cancel_job)
            .service(runs::list_candidates)
            .service(assets::list_assets)
            .service(assets::upload_asset)
            .service(assets::get_asset)
            .service(assets::asset_content)
            .service(catalog::list_style_guides)
            .service(catalog::create_style_guide)
            .service(catalog::get_style_guide)
            .service(catalog::update_style_guide)
            .service(catalog::delete_style_guide)
            .service(catalog::list_characters)
            .service(catalog::create_character)
            .service(catalog::get_character)
            .service(catalog::update_character)
            .service(catalog::delete_character)
            .service(catalog::list_reference_sets)
            .service(catalog::create_reference_set)
            .service(catalog::get_reference_set)
            .service(catalog::update_reference_set)
            .service(catalog::delete_reference_set)
            .service(catalog::list_prompt_templates)
            .service(catalog::create_prompt_template)
            .service(catalog::get_prompt_template)
            .service(catalog::update_prompt_template)
            .service(catalog::delete_prompt_template)
            .service(catalog::list_template_versions)
            .service(reference_items::list_items)
            .service(reference_items::create_item)
            .service(reference_items::get_item)
            .service(reference_items::update_item)
            .service(reference_items::delete_item)
            .service(copilot::list_sessions)
            .service(copilot::create_session)
            .service(copilot::get_session)
            .service(copilot::list_messages)
            .service(copilot::append_message)
            .service(copilot::list_instructions)
            .service(copilot::create_instruction)
            .service(copilot::get_instruction)
            .service(copilot::list_instruction_events)
            .service(copilot::confirm_instruction)
            .service(copilot::cancel_instruction)
            .service(bootstrap::export_bootstrap)
            .service(bootstrap::import_bootstrap)
            .service(asset_links::list_links)
            .service(asset_links::create_link)
            .service(asset_links::get_link)
            .service(asset_links::update_link)
            .service(asset_links::delete_link)
            .service(ledger::list_quality_reports)
            .service(ledger::list_cost_events)
            .service(ledger::cost_summary)
            .service(ledger::quality_summary)
            .service(ledger::list_exports)
            .service(exports::create_export)
            .service(exports::cancel_export)
            .service(sync::start_sync)
            .service(sync::sync_state)
            .service(voice::create_speech)
            .service(voice::create_transcription)
            .service(voice::list_voice)
            .service(voice::get_voice)
            .service(ledger::get_export)
            .service(provider_accounts::list_accounts)
            .service(provider_accounts::upsert_account)
            .service(provider_accounts::get_account)
            .service(provider_accounts::update_account)
            .service(provider_accounts::delete_account)
            .service(provider_accounts::check_account)
            .service(secrets::list_secrets)
            .service(secrets::rotation_status)
            .service(secrets::upsert_secret)
            .service(secrets::rotate_secrets)
            .service(secrets::delete_secret)
            .service(webhooks::create_webhook)
            .service(webhooks::list_webhooks)
            .service(webhooks::delete_webhook)
            .service(webhooks::list_deliveries)
            .service(queue::get_queue)
            .service(queue::pause_queue)
            .service(queue::resume_queue)
            .service(feed::events_ws)
            .service(admin::supervision)
            .service(admin::nodes)
            .service(admin::restart_actor)
            .service(admin::pause_all)
            .service(admin::resume_all)
            .service(metrics::metrics)
    };
}

/// The routes of a worker's application. Building the API document here
/// would do it in every worker, and each worker's allocator keeps what that
/// transient work freed (megabytes per worker at idle).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    every_route!(cfg);
}

/// The same routes, documented (see [`crate::openapi`]).
pub fn configure_documented(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    every_route!(cfg);
}

/// The mounted (method, path template) pairs, from the same list, without
/// building the API document.
pub fn catalogue() -> crate::RouteCatalogue {
    let mut catalogue = Catalogue::default();
    every_route!(catalogue);
    catalogue.0
}

#[derive(Default)]
struct Catalogue(crate::RouteCatalogue);

impl Catalogue {
    fn service<H: utoipa::Path>(&mut self, _handler: H) -> &mut Self {
        use utoipa::openapi::path::HttpMethod;
        for method in H::methods() {
            let method = match method {
                HttpMethod::Get => actix_web::http::Method::GET,
                HttpMethod::Post => actix_web::http::Method::POST,
                HttpMethod::Put => actix_web::http::Method::PUT,
                HttpMethod::Delete => actix_web::http::Method::DELETE,
                HttpMethod::Patch => actix_web::http::Method::PATCH,
                HttpMethod::Head => actix_web::http::Method::HEAD,
                HttpMethod::Options => actix_web::http::Method::OPTIONS,
                HttpMethod::Trace => actix_web::http::Method::TRACE,
            };
            self.0.add(method, H::path());
        }
        self
    }
}
