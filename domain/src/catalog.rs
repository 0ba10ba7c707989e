//! The project's creative catalogue: style guides, characters, reference sets
//! and prompt templates — named records (names unique per project) with a
//! few text fields. One generic service; each kind says its label, fields
//! and how its rows are built (`CatalogKind`).

use std::collections::BTreeMap;

use entities::{
    characters, prompt_template_versions, prompt_templates, reference_sets, style_guides,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{optional_text, required_text};
use crate::{ServiceError, time};

const NAME_MAX: usize = 200;
const TEXT_MAX: usize = 64 * 1024;

/// A text field besides `name`.
pub struct TextField {
    pub name: &'static str,
    /// Must be present and non-blank on create (and non-blank when updated).
    pub required: bool,
}

/// Supplied fields: `Some(None)` clears an optional field.
pub type Values = BTreeMap<&'static str, Option<String>>;

pub trait CatalogKind {
    type Entity: EntityTrait<Model = Self::Model>;
    type Model: Clone + Send + Sync + IntoActiveModel<Self::Active>;
    type Active: ActiveModelTrait<Entity = Self::Entity> + sea_orm::ActiveModelBehavior + Send;
    /// `Style guide`: used in messages.
    const LABEL: &'static str;
    const FIELDS: &'static [TextField];

    fn project_col() -> <Self::Entity as EntityTrait>::Column;
    fn name_col() -> <Self::Entity as EntityTrait>::Column;
    fn id_col() -> <Self::Entity as EntityTrait>::Column;
    fn updated_col() -> <Self::Entity as EntityTrait>::Column;
    fn id(m: &Self::Model) -> Uuid;
    /// A new row; `values` holds every required field.
    fn build(id: Uuid, project_id: Uuid, name: String, values: &Values) -> Self::Model;
    /// Applies supplied fields (and the name) to a row.
    fn apply(m: &mut Self::Model, name: Option<String>, values: &Values);
    /// The contract's JSON shape (nulls as `""`, second-precision times).
    fn view(m: &Self::Model) -> Value;
    /// Runs in the transaction that created or updated `row`.
    fn after_write<C: ConnectionTrait>(
        db: &C,
        row: &Self::Model,
    ) -> impl Future<Output = Result<(), sea_orm::DbErr>> + Send {
        let _ = (db, row);
        async { Ok(()) }
    }
}

/// Body fields as received (`None`: absent).
pub struct Input<'a> {
    pub name: Option<&'a str>,
    pub fields: Vec<(&'static str, Option<&'a str>)>,
}

fn value_of<'a>(input: &Input<'a>, field: &str) -> Option<&'a str> {
    input
        .fields
        .iter()
        .find(|(n, _)| *n == field)
        .and_then(|(_, v)| *v)
}

/// A field's value: required ones non-blank, optional ones blank -> `None`.
fn checked(f: &TextField, raw: Option<&str>) -> Result<Option<String>, ServiceError> {
    if f.required {
        required_text(f.name, raw, TEXT_MAX).map(Some)
    } else {
        optional_text(f.name, raw, TEXT_MAX)
    }
}

/// Checked create input: name and required fields present.
pub fn validate_create<K: CatalogKind>(
    input: &Input<'_>,
) -> Result<(String, Values), ServiceError> {
    let name = required_text("name", input.name, NAME_MAX)?;
    let mut values = Values::new();
    for f in K::FIELDS {
        values.insert(f.name, checked(f, value_of(input, f.name))?);
    }
    Ok((name, values))
}

/// Checked partial update: at least one field; required ones stay non-blank.
pub fn validate_update<K: CatalogKind>(
    input: &Input<'_>,
) -> Result<(Option<String>, Values), ServiceError> {
    let name = match input.name {
        Some(n) => Some(required_text("name", Some(n), NAME_MAX)?),
        None => None,
    };
    let mut values = Values::new();
    for f in K::FIELDS {
        if let Some(raw) = value_of(input, f.name) {
            values.insert(f.name, checked(f, Some(raw))?);
        }
    }
    if name.is_none() && values.is_empty() {
        let names: Vec<&str> = std::iter::once("name")
            .chain(K::FIELDS.iter().map(|f| f.name))
            .collect();
        return Err(ServiceError::validation(
            "field_required",
            format!("Provide at least one of: {}", names.join(", ")),
        ));
    }
    Ok((name, values))
}

fn duplicate<K: CatalogKind>() -> ServiceError {
    ServiceError::validation(
        "duplicate_name",
        format!("{} name already exists", K::LABEL),
    )
}

/// Most recently updated first (`updated_at` desc, `id` desc).
pub async fn list<K: CatalogKind, C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<Vec<K::Model>, ServiceError> {
    Ok(K::Entity::find()
        .filter(K::project_col().eq(project_id))
        .order_by_desc(K::updated_col())
        .order_by_desc(K::id_col())
        .all(db)
        .await?)
}

pub async fn get<K: CatalogKind, C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<K::Model, ServiceError> {
    let message = format!("{} not found", K::LABEL);
    crate::lookup::owned::<K::Entity, _>(
        db,
        (K::id_col(), K::project_col()),
        project_id,
        raw_id,
        &message,
    )
    .await
}

/// Whether another row of the project has this name.
async fn name_taken<K: CatalogKind, C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    name: &str,
    except: Option<Uuid>,
) -> Result<bool, ServiceError> {
    let mut q = K::Entity::find()
        .filter(K::project_col().eq(project_id))
        .filter(K::name_col().eq(name));
    if let Some(id) = except {
        q = q.filter(K::id_col().ne(id));
    }
    Ok(q.one(db).await?.is_some())
}

/// Maps a unique-index violation (two writers, one name) to the duplicate error.
fn unique_as_duplicate<K: CatalogKind>(e: sea_orm::DbErr) -> ServiceError {
    match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => duplicate::<K>(),
        _ => e.into(),
    }
}

pub async fn create<K: CatalogKind>(
    db: &DatabaseConnection,
    project_id: Uuid,
    (name, values): (String, Values),
) -> Result<K::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    if name_taken::<K, _>(&txn, project_id, &name, None).await? {
        return Err(duplicate::<K>());
    }
    let row = K::build(Uuid::now_v7(), project_id, name, &values);
    row.clone()
        .into_active_model()
        .reset_all()
        .insert(&txn)
        .await
        .map_err(unique_as_duplicate::<K>)?;
    K::after_write(&txn, &row).await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn update<K: CatalogKind>(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_id: &str,
    (name, values): (Option<String>, Values),
) -> Result<K::Model, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let mut row = get::<K, _>(&txn, project_id, raw_id).await?;
    if let Some(n) = &name
        && name_taken::<K, _>(&txn, project_id, n, Some(K::id(&row))).await?
    {
        return Err(duplicate::<K>());
    }
    K::apply(&mut row, name, &values);
    row.clone()
        .into_active_model()
        .reset_all()
        .update(&txn)
        .await
        .map_err(unique_as_duplicate::<K>)?;
    K::after_write(&txn, &row).await?;
    crate::db::commit(txn).await?;
    Ok(row)
}

pub async fn delete<K: CatalogKind>(
    db: &DatabaseConnection,
    project_id: Uuid,
    raw_id: &str,
) -> Result<Uuid, ServiceError> {
    let txn = crate::db::begin_write(db).await?;
    let row = get::<K, _>(&txn, project_id, raw_id).await?;
    let id = K::id(&row);
    K::Entity::delete_many()
        .filter(K::id_col().eq(id))
        .exec(&txn)
        .await?;
    crate::db::commit(txn).await?;
    Ok(id)
}

fn text(values: &Values, field: &str) -> Option<String> {
    values.get(field).cloned().flatten()
}

/// Applies a supplied field: `Some(v)` sets (or clears, for optional ones).
fn set<T>(slot: &mut T, values: &Values, field: &str, wrap: impl Fn(Option<String>) -> Option<T>) {
    if let Some(v) = values.get(field)
        && let Some(new) = wrap(v.clone())
    {
        *slot = new;
    }
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    time::format(t)
}

/// The column accessors every catalogue entity has the same way.
macro_rules! catalog_columns {
    ($m:ident) => {
        fn project_col() -> $m::Column {
            $m::Column::ProjectId
        }
        fn name_col() -> $m::Column {
            $m::Column::Name
        }
        fn id_col() -> $m::Column {
            $m::Column::Id
        }
        fn updated_col() -> $m::Column {
            $m::Column::UpdatedAt
        }
        fn id(m: &Self::Model) -> Uuid {
            m.id
        }
    };
}

pub struct StyleGuide;

impl CatalogKind for StyleGuide {
    type Entity = style_guides::Entity;
    type Model = style_guides::Model;
    type Active = style_guides::ActiveModel;
    const LABEL: &'static str = "Style guide";
    const FIELDS: &'static [TextField] = &[
        TextField {
            name: "instructions",
            required: true,
        },
        TextField {
            name: "notes",
            required: false,
        },
    ];
    catalog_columns!(style_guides);
    fn build(id: Uuid, project_id: Uuid, name: String, values: &Values) -> Self::Model {
        let now = time::now();
        style_guides::Model {
            id,
            project_id,
            name,
            instructions: text(values, "instructions").unwrap_or_default(),
            notes: text(values, "notes"),
            created_at: now,
            updated_at: now,
        }
    }
    fn apply(m: &mut Self::Model, name: Option<String>, values: &Values) {
        if let Some(n) = name {
            m.name = n;
        }
        set(&mut m.instructions, values, "instructions", |v| v);
        set(&mut m.notes, values, "notes", Some);
        m.updated_at = time::now();
    }
    fn view(m: &Self::Model) -> Value {
        json!({
            "id": m.id, "project_id": m.project_id, "name": m.name, "instructions": m.instructions,
            "notes": m.notes.clone().unwrap_or_default(),
            "created_at": ts(&m.created_at), "updated_at": ts(&m.updated_at),
        })
    }
}

pub struct Character;

impl CatalogKind for Character {
    type Entity = characters::Entity;
    type Model = characters::Model;
    type Active = characters::ActiveModel;
    const LABEL: &'static str = "Character";
    const FIELDS: &'static [TextField] = &[
        TextField {
            name: "description",
            required: false,
        },
        TextField {
            name: "prompt_text",
            required: false,
        },
    ];
    catalog_columns!(characters);
    fn build(id: Uuid, project_id: Uuid, name: String, values: &Values) -> Self::Model {
        let now = time::now();
        characters::Model {
            id,
            project_id,
            name,
            description: text(values, "description"),
            prompt_text: text(values, "prompt_text"),
            created_at: now,
            updated_at: now,
        }
    }
    fn apply(m: &mut Self::Model, name: Option<String>, values: &Values) {
        if let Some(n) = name {
            m.name = n;
        }
        set(&mut m.description, values, "description", Some);
        set(&mut m.prompt_text, values, "prompt_text", Some);
        m.updated_at = time::now();
    }
    fn view(m: &Self::Model) -> Value {
        json!({
            "id": m.id, "project_id": m.project_id, "name": m.name,
            "description": m.description.clone().unwrap_or_default(),
            "prompt_text": m.prompt_text.clone().unwrap_or_default(),
            "created_at": ts(&m.created_at), "updated_at": ts(&m.updated_at),
        })
    }
}

pub struct ReferenceSet;

impl CatalogKind for ReferenceSet {
    type Entity = reference_sets::Entity;
    type Model = reference_sets::Model;
    type Active = reference_sets::ActiveModel;
    const LABEL: &'static str = "Reference set";
    const FIELDS: &'static [TextField] = &[TextField {
        name: "description",
        required: false,
    }];
    catalog_columns!(reference_sets);
    fn build(id: Uuid, project_id: Uuid, name: String, values: &Values) -> Self::Model {
        let now = time::now();
        reference_sets::Model {
            id,
            project_id,
            name,
            description: text(values, "description"),
            created_at: now,
            updated_at: now,
        }
    }
    fn apply(m: &mut Self::Model, name: Option<String>, values: &Values) {
        if let Some(n) = name {
            m.name = n;
        }
        set(&mut m.description, values, "description", Some);
        m.updated_at = time::now();
    }
    fn view(m: &Self::Model) -> Value {
        json!({
            "id": m.id, "project_id": m.project_id, "name": m.name,
            "description": m.description.clone().unwrap_or_default(),
            "created_at": ts(&m.created_at), "updated_at": ts(&m.updated_at),
        })
    }
}

pub struct PromptTemplate;

impl CatalogKind for PromptTemplate {
    type Entity = prompt_templates::Entity;
    type Model = prompt_templates::Model;
    type Active = prompt_templates::ActiveModel;
    const LABEL: &'static str = "Prompt template";
    const FIELDS: &'static [TextField] = &[TextField {
        name: "template_text",
        required: true,
    }];
    catalog_columns!(prompt_templates);
    fn build(id: Uuid, project_id: Uuid, name: String, values: &Values) -> Self::Model {
        let now = time::now();
        prompt_templates::Model {
            id,
            project_id,
            name,
            template_text: text(values, "template_text").unwrap_or_default(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }
    fn apply(m: &mut Self::Model, name: Option<String>, values: &Values) {
        if let Some(n) = name {
            m.name = n;
        }
        set(&mut m.template_text, values, "template_text", |v| v);
        // Every edit is a new version (kept in `prompt_template_versions`).
        m.version += 1;
        m.updated_at = time::now();
    }
    fn view(m: &Self::Model) -> Value {
        json!({
            "id": m.id, "project_id": m.project_id, "name": m.name, "template_text": m.template_text,
            "version": m.version, "created_at": ts(&m.created_at), "updated_at": ts(&m.updated_at),
        })
    }
    /// Every state of a template is kept as a numbered version.
    fn after_write<C: ConnectionTrait>(
        db: &C,
        t: &Self::Model,
    ) -> impl Future<Output = Result<(), sea_orm::DbErr>> + Send {
        let version =
            prompt_template_versions::ActiveModel::from(prompt_template_versions::Model {
                id: Uuid::now_v7(),
                project_id: t.project_id,
                template_id: t.id,
                version: t.version,
                name: t.name.clone(),
                template_text: t.template_text.clone(),
                created_at: t.updated_at,
            });
        async move { version.insert(db).await.map(|_| ()) }
    }
}

/// A template's versions, oldest first.
pub async fn template_versions<C: ConnectionTrait>(
    db: &C,
    template_id: Uuid,
) -> Result<Vec<prompt_template_versions::Model>, ServiceError> {
    Ok(prompt_template_versions::Entity::find()
        .filter(prompt_template_versions::Column::TemplateId.eq(template_id))
        .order_by_asc(prompt_template_versions::Column::Version)
        .all(db)
        .await?)
}
