//! Style guides, characters, reference sets and prompt templates (journey
//! J02): one shape, checked per kind — create, unique names, partial
//! updates, validation before lookup, messages, isolation, template versions.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

struct Kind {
    path: &'static str,
    plural: &'static str,
    singular: &'static str,
    label: &'static str,
    /// A valid create body besides the name.
    fields: Value,
    /// The "Provide at least one of" list.
    updatable: &'static str,
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            path: "style-guides",
            plural: "style_guides",
            singular: "style_guide",
            label: "Style guide",
            fields: json!({"instructions": "Heavy ink, flat tones", "notes": "from issue 1"}),
            updatable: "name, instructions, notes",
        },
        Kind {
            path: "characters",
            plural: "characters",
            singular: "character",
            label: "Character",
            fields: json!({"description": "A courier", "prompt_text": "red scarf"}),
            updatable: "name, description, prompt_text",
        },
        Kind {
            path: "reference-sets",
            plural: "reference_sets",
            singular: "reference_set",
            label: "Reference set",
            fields: json!({"description": "Harbour district"}),
            updatable: "name, description",
        },
        Kind {
            path: "prompt-templates",
            plural: "prompt_templates",
            singular: "prompt_template",
            label: "Prompt template",
            fields: json!({"template_text": "{{scene}} at {{time}}"}),
            updatable: "name, template_text",
        },
    ]
}

fn with_name(fields: &Value, name: &str) -> Value {
    let mut body = fields.clone();
    body["name"] = json!(name);
    body
}

#[actix_web::test]
async fn every_catalogue_kind_behaves_the_same() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    app.create_project(&token, "Other", "other").await;
    for k in kinds() {
        let base = format!("/api/projects/book/{}", k.path);
        // Validation before the project is looked up.
        let (s, e) = app
            .post(
                &format!("/api/projects/nope/{}", k.path),
                &token,
                k.fields.clone(),
            )
            .await;
        assert_error(s, &e, 400, "field_required");
        assert_eq!(e["error"], "Field 'name' is required", "{}", k.path);
        let (s, e) = app
            .post(
                &format!("/api/projects/nope/{}", k.path),
                &token,
                with_name(&k.fields, "A"),
            )
            .await;
        assert_error(s, &e, 404, "not_found");

        let (s, a) = app.post(&base, &token, with_name(&k.fields, "Alpha")).await;
        assert_eq!(s, StatusCode::OK, "{a}");
        let alpha = a[k.singular].clone();
        assert_eq!(alpha["name"], "Alpha");
        for (field, value) in k.fields.as_object().unwrap() {
            assert_eq!(&alpha[field], value, "{} {field}", k.path);
        }
        let id = alpha["id"].as_str().unwrap().to_string();
        let (s, e) = app.post(&base, &token, with_name(&k.fields, "Alpha")).await;
        assert_error(s, &e, 400, "duplicate_name");
        assert_eq!(e["error"], format!("{} name already exists", k.label));
        let (_, b) = app.post(&base, &token, with_name(&k.fields, "Beta")).await;
        let beta_id = b[k.singular]["id"].as_str().unwrap().to_string();

        // Partial update: at least one field, before any lookup.
        let (s, e) = app
            .put(
                &format!("{base}/{}", uuid::Uuid::now_v7()),
                &token,
                json!({}),
            )
            .await;
        assert_error(s, &e, 400, "field_required");
        assert_eq!(
            e["error"],
            format!("Provide at least one of: {}", k.updatable)
        );
        let (s, e) = app
            .put(&format!("{base}/{id}"), &token, json!({"name": "Beta"}))
            .await;
        assert_error(s, &e, 400, "duplicate_name");
        let (s, e) = app
            .put(&format!("{base}/{id}"), &token, json!({"name": "  "}))
            .await;
        assert_error(s, &e, 400, "field_required");
        let (s, u) = app
            .put(&format!("{base}/{id}"), &token, json!({"name": "Alpha 2"}))
            .await;
        assert_eq!(s, StatusCode::OK, "{u}");
        assert_eq!(u[k.singular]["name"], "Alpha 2");
        for (field, value) in k.fields.as_object().unwrap() {
            assert_eq!(
                &u[k.singular][field], value,
                "untouched: {} {field}",
                k.path
            );
        }

        // Most recently updated first; detail; messages; isolation.
        let (_, list) = app.get(&base, &token).await;
        assert_eq!(list["count"], 2);
        assert_eq!(list[k.plural][0]["id"], json!(id), "{list}");
        let (s, d) = app.get(&format!("{base}/{beta_id}"), &token).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(d[k.singular]["name"], "Beta");
        let (s, e) = app
            .get(&format!("/api/projects/other/{}/{id}", k.path), &token)
            .await;
        assert_error(s, &e, 404, "not_found");
        assert_eq!(e["error"], format!("{} not found", k.label));
        let scoped = app.scoped_token(&token, "other").await;
        let (s, _) = app.get(&base, &scoped).await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        let (s, del) = app
            .call(
                Method::DELETE,
                &format!("{base}/{beta_id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{del}");
        assert_eq!(
            (del["deleted"].as_bool(), del["id"].as_str()),
            (Some(true), Some(beta_id.as_str()))
        );
        let (s, _) = app
            .call(
                Method::DELETE,
                &format!("{base}/{beta_id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[actix_web::test]
async fn required_fields_optional_clears_and_template_versions() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, e) = app
        .post(
            "/api/projects/book/style-guides",
            &token,
            json!({"name": "Ink"}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'instructions' is required");
    let (_, g) = app
        .post(
            "/api/projects/book/style-guides",
            &token,
            json!({"name": "Ink", "instructions": "flat", "notes": "n"}),
        )
        .await;
    let id = g["style_guide"]["id"].as_str().unwrap();
    let (_, u) = app
        .put(
            &format!("/api/projects/book/style-guides/{id}"),
            &token,
            json!({"notes": ""}),
        )
        .await;
    assert_eq!(
        u["style_guide"]["notes"], "",
        "blank clears an optional field"
    );
    let (s, e) = app
        .put(
            &format!("/api/projects/book/style-guides/{id}"),
            &token,
            json!({"instructions": " "}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");

    let (_, t) = app
        .post(
            "/api/projects/book/prompt-templates",
            &token,
            json!({"name": "Panel", "template_text": "v1 {{scene}}"}),
        )
        .await;
    let tid = t["prompt_template"]["id"].as_str().unwrap();
    assert_eq!(t["prompt_template"]["version"], 1);
    let (_, t2) = app
        .put(
            &format!("/api/projects/book/prompt-templates/{tid}"),
            &token,
            json!({"template_text": "v2 {{scene}}"}),
        )
        .await;
    assert_eq!(t2["prompt_template"]["version"], 2);
    let (_, v) = app
        .get(
            &format!("/api/projects/book/prompt-templates/{tid}/versions"),
            &token,
        )
        .await;
    assert_eq!(v["count"], 2);
    assert_eq!(v["template_id"], json!(tid));
    let texts: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["template_text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["v1 {{scene}}", "v2 {{scene}}"]);
    // Typed fields are enforced.
    let (s, e) = app
        .post("/api/projects/book/characters", &token, json!({"name": 5}))
        .await;
    assert_error(s, &e, 422, "invalid_field_type");
}

#[actix_web::test]
async fn reference_set_items_hold_content_order_and_project_assets() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    app.create_project(&token, "Other", "other").await;
    let (_, set) = app
        .post(
            "/api/projects/book/reference-sets",
            &token,
            json!({"name": "Harbour"}),
        )
        .await;
    let set_id = set["reference_set"]["id"].as_str().unwrap().to_string();
    let base = format!("/api/projects/book/reference-sets/{set_id}/items");
    // An asset of this project, and one of another project.
    let (_, own) = app
        .post("/api/projects/book/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 1, "wait": true}))
        .await;
    let own_asset = own["jobs"][0]["final_asset_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, other) = app
        .post("/api/projects/other/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:2@64x48"], "stage": "style", "candidates": 1, "wait": true}))
        .await;
    let foreign = other["jobs"][0]["final_asset_id"]
        .as_str()
        .unwrap()
        .to_string();

    let (s, e) = app.post(&base, &token, json!({"content_text": "x"})).await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'label' is required");
    let (s, e) = app.post(&base, &token, json!({"label": "Pier"})).await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(
        e["error"],
        "Provide at least one of: content_uri, content_text"
    );
    let (s, e) = app
        .post(&base, &token, json!({"label": "Pier", "asset_id": foreign}))
        .await;
    assert_error(s, &e, 400, "asset_not_found");
    let (s, e) = app
        .post(
            "/api/projects/book/reference-sets/nope/items",
            &token,
            json!({"label": "Pier", "content_text": "x"}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Reference set not found");

    let (s, a) = app
        .post(&base, &token, json!({"label": "Pier", "asset_id": own_asset, "sort_order": 2, "weight": 0.8, "notes": "dawn", "metadata_json": {"angle": "low"}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["item"]["asset_id"], json!(own_asset));
    assert_eq!(a["item"]["content_uri"], "");
    let pier = a["item"]["id"].as_str().unwrap().to_string();
    let (_, b) = app
        .post(&base, &token, json!({"label": "Crane", "content_uri": "https://example.com/crane.png", "sort_order": 1}))
        .await;
    let crane = b["item"]["id"].as_str().unwrap().to_string();
    let (_, list) = app.get(&base, &token).await;
    assert_eq!(list["reference_set_id"], json!(set_id));
    let labels: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["Crane", "Pier"], "by sort_order");

    let (s, e) = app.put(&format!("{base}/{pier}"), &token, json!({})).await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(
        e["error"],
        "Provide at least one of: label, content_uri, content_text, sort_order, metadata_json"
    );
    let (s, e) = app
        .put(
            &format!("{base}/{crane}"),
            &token,
            json!({"content_uri": ""}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");
    let (s, u) = app
        .put(&format!("{base}/{pier}"), &token, json!({"sort_order": 0}))
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["item"]["weight"], 0.8, "untouched");
    let (s, e) = app
        .get(
            &format!("/api/projects/other/reference-sets/{set_id}/items/{pier}"),
            &token,
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Reference set item not found");
    let (s, d) = app
        .call(
            Method::DELETE,
            &format!("{base}/{crane}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let (_, list) = app.get(&base, &token).await;
    assert_eq!(list["count"], 1);
}

#[actix_web::test]
async fn racing_creates_of_one_name_make_one_row() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let body = json!({"name": "Ink", "instructions": "flat"});
    let attempts =
        (0..6).map(|_| app.post("/api/projects/book/style-guides", &token, body.clone()));
    let results = futures_util::future::join_all(attempts).await;
    let created = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(created, 1, "{results:?}");
    for (s, e) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_error(*s, e, 400, "duplicate_name");
    }
    let (_, list) = app.get("/api/projects/book/style-guides", &token).await;
    assert_eq!(list["count"], 1);
    // Concurrent partial updates: last writer wins, each update whole.
    let id = list["style_guides"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/projects/book/style-guides/{id}");
    let updates = (0..4).map(|i| {
        app.put(
            &path,
            &token,
            json!({"instructions": format!("v{i}"), "notes": format!("n{i}")}),
        )
    });
    for (s, b) in futures_util::future::join_all(updates).await {
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (_, g) = app
        .get(&format!("/api/projects/book/style-guides/{id}"), &token)
        .await;
    let (ins, notes) = (
        g["style_guide"]["instructions"].as_str().unwrap(),
        g["style_guide"]["notes"].as_str().unwrap(),
    );
    assert_eq!(
        ins[1..],
        notes[1..],
        "fields of one update, never mixed: {g}"
    );
}
