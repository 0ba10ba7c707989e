//! Application users. Tokens minted without a user (bootstrap, dev bypass)
//! belong to the built-in user `local`.

use entities::app_users;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::{ServiceError, time};

pub const LOCAL_USERNAME: &str = "local";
pub const LOCAL_DISPLAY_NAME: &str = "Local User";

pub async fn ensure_local_user<C: ConnectionTrait>(db: &C) -> Result<Uuid, ServiceError> {
    ensure_user(db, LOCAL_USERNAME, LOCAL_DISPLAY_NAME).await
}

/// Finds the user by (normalised) username or creates it.
pub async fn ensure_user<C: ConnectionTrait>(
    db: &C,
    username: &str,
    display_name: &str,
) -> Result<Uuid, ServiceError> {
    if let Some(user) = find_by_username(db, username).await? {
        return Ok(user.id);
    }
    let now = time::now();
    let id = Uuid::now_v7();
    let insert = app_users::Entity::insert(app_users::ActiveModel {
        id: Set(id),
        username: Set(username.to_string()),
        display_name: Set(display_name.to_string()),
        email: Set(None),
        is_active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict_do_nothing_on([app_users::Column::Username])
    .exec_without_returning(db)
    .await;
    insert?;
    // Another writer may have won the race: read back whichever row exists.
    find_by_username(db, username)
        .await?
        .map(|u| u.id)
        .ok_or_else(|| ServiceError::missing("user", username))
}

pub async fn find_by_username<C: ConnectionTrait>(
    db: &C,
    username: &str,
) -> Result<Option<app_users::Model>, ServiceError> {
    Ok(app_users::Entity::find()
        .filter(app_users::Column::Username.eq(username))
        .one(db)
        .await?)
}
