//! Column and constraint shorthands shared by the migrations.
//!
//! Conventions: UUID primary keys named `id`, UTC timestamps (`timestamptz` on
//! PostgreSQL), JSON in `jsonb`/text, and every project-owned row carries a
//! `project_id` that cascades when its project is deleted.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub fn table(name: &'static str) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(name).col(pk_uuid("id"));
    t
}

pub fn created_at() -> ColumnDef {
    timestamp_with_time_zone("created_at")
}

pub fn updated_at() -> ColumnDef {
    timestamp_with_time_zone("updated_at")
}

pub fn json_obj(name: &'static str) -> ColumnDef {
    let mut c = json_binary(name);
    c.default(Expr::val("{}"));
    c
}

/// `project_id NOT NULL REFERENCES projects(id) ON DELETE CASCADE`.
pub fn project_owned(t: &mut TableCreateStatement, table: &'static str) {
    t.col(uuid("project_id"));
    fk(
        t,
        table,
        "project_id",
        "projects",
        ForeignKeyAction::Cascade,
    );
}

pub fn fk(
    t: &mut TableCreateStatement,
    table: &'static str,
    column: &'static str,
    target: &'static str,
    on_delete: ForeignKeyAction,
) {
    t.foreign_key(
        ForeignKey::create()
            .name(format!("fk_{table}_{column}"))
            .from(table, column)
            .to(target, "id")
            .on_delete(on_delete),
    );
}

pub fn index(table: &'static str, name: &str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(format!("idx_{table}_{name}")).table(table);
    for c in cols {
        i.col(*c);
    }
    i
}

pub fn unique(table: &'static str, name: &str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = index(table, name, cols);
    i.unique();
    i
}

pub async fn create_all(
    manager: &SchemaManager<'_>,
    tables: Vec<TableCreateStatement>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for t in tables {
        manager.create_table(t).await?;
    }
    for i in indexes {
        manager.create_index(i).await?;
    }
    Ok(())
}

pub async fn drop_all(manager: &SchemaManager<'_>, tables: &[&'static str]) -> Result<(), DbErr> {
    for t in tables.iter().rev() {
        manager
            .drop_table(Table::drop().table(*t).to_owned())
            .await?;
    }
    Ok(())
}
