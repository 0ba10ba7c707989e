//! Reading one row of a project by an id from a URL: anything that is not
//! that project's row — a malformed id, an unknown one, another project's —
//! is the same "not found", so ids from other projects reveal nothing.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::ServiceError;

pub async fn owned<E: EntityTrait, C: ConnectionTrait>(
    db: &C,
    (id_col, project_col): (E::Column, E::Column),
    project_id: Uuid,
    raw_id: &str,
    not_found: &str,
) -> Result<E::Model, ServiceError> {
    let missing = || ServiceError::not_found(not_found.to_string());
    let id = Uuid::parse_str(raw_id.trim()).map_err(|_| missing())?;
    E::find()
        .filter(id_col.eq(id))
        .filter(project_col.eq(project_id))
        .one(db)
        .await?
        .ok_or_else(missing)
}
