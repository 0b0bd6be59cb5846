//! Products: create, read, change, delete and search, each change with its outbox event.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use uuid::Uuid;

use super::{
    outbox::{topic, NewEvent, Outbox},
    schema::products,
    users::parse_id,
    DbConnection, UseCase,
};
use crate::{
    db::DbError,
    domain::refusal::{Missing, Refusal},
    domain::{
        catalog::{
            contains_pattern, fold, IfMatch, Product, ProductChanges, ProductFilter, ProductSort, ProductStatus,
        },
        clock,
        paging::{Page, PageRequest},
    },
};

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = products)]
pub struct ProductRow {
    pub id: String,
    pub name: String,
    pub name_folded: String,
    pub description: String,
    pub price_cents: i64,
    pub stock: i64,
    pub status: String,
    pub version: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub deleted_at: Option<NaiveDateTime>,
}

/// `ProductRow`'s columns in its field order, for `RETURNING` (the multi-backend connection
/// takes no `as_returning()`).
type ProductColumns = <ProductRow as Selectable<<DbConnection as Connection>::Backend>>::SelectExpression;

pub fn product_columns() -> ProductColumns {
    <ProductRow as Selectable<<DbConnection as Connection>::Backend>>::construct_selection()
}

impl ProductRow {
    pub fn into_product(self) -> Result<Product, DbError> {
        Ok(Product {
            id: parse_id(&self.id)?,
            status: ProductStatus::parse(&self.status)
                .ok_or_else(|| DbError::Internal(format!("unknown product status {:?}", self.status)))?,
            name: self.name,
            description: self.description,
            price_cents: self.price_cents,
            stock: self.stock,
            version: self.version,
            created_at: clock::to_utc(self.created_at),
            updated_at: clock::to_utc(self.updated_at),
        })
    }
}

fn not_found() -> DbError {
    DbError::Refused(Refusal::NotFound(Missing::Product))
}

/// A live (not deleted) product by id.
pub fn find_live(conn: &mut DbConnection, id: &str) -> Result<Option<ProductRow>, DbError> {
    Ok(products::table
        .filter(products::id.eq(id))
        .filter(products::deleted_at.is_null())
        .select(ProductRow::as_select())
        .first(conn)
        .optional()?)
}

/// The product as it is now, with the event announcing the change.
pub fn product_event(conn: &mut DbConnection, id: &str, kind: &'static str) -> Result<(Product, NewEvent), DbError> {
    let product = find_live(conn, id)?.ok_or_else(not_found)?.into_product()?;
    let event = NewEvent::public(topic::PRODUCTS, kind, &product);
    Ok((product, event))
}

pub struct CreateProduct {
    pub changes: ProductChanges,
}

impl UseCase for CreateProduct {
    type Output = Product;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Product, DbError> {
        let now = clock::now();
        let c = self.changes;
        let name = c.name.unwrap_or_default();
        let row = ProductRow {
            id: Uuid::now_v7().to_string(),
            name_folded: fold(&name),
            name,
            description: c.description.unwrap_or_default(),
            price_cents: c.price_cents.unwrap_or_default(),
            stock: c.stock.unwrap_or_default(),
            status: c.status.unwrap_or(ProductStatus::Active).as_str().to_owned(),
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        conn.write_transaction(|conn| {
            diesel::insert_into(products::table).values(&row).execute(conn)?;
            let (product, event) = product_event(conn, &row.id, "product.created")?;
            outbox.append(conn, vec![event])?;
            Ok(product)
        })
    }
}

pub struct GetProduct {
    pub id: Uuid,
}

impl UseCase for GetProduct {
    type Output = Option<Product>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Option<Product>, DbError> {
        find_live(conn, &self.id.to_string())?.map(ProductRow::into_product).transpose()
    }
}

#[derive(AsChangeset)]
#[diesel(table_name = products)]
struct ProductChangeset {
    name: Option<String>,
    name_folded: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    stock: Option<i64>,
    status: Option<String>,
}

pub struct UpdateProduct {
    pub id: Uuid,
    pub changes: ProductChanges,
    /// The client's `If-Match`: the change applies only to that version.
    pub if_match: Option<IfMatch>,
}

impl UseCase for UpdateProduct {
    type Output = Product;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Product, DbError> {
        let id = self.id.to_string();
        conn.write_transaction(|conn| {
            let current = find_live(conn, &id)?.ok_or_else(not_found)?;
            if self.if_match.as_ref().is_some_and(|precondition| !precondition.holds(current.version)) {
                return Err(Refusal::ProductChanged.into());
            }
            let c = self.changes;
            let changeset = ProductChangeset {
                name_folded: c.name.as_deref().map(fold),
                name: c.name,
                description: c.description,
                price_cents: c.price_cents,
                stock: c.stock,
                status: c.status.map(|s| s.as_str().to_owned()),
            };
            // Conditional on the version read above, so a concurrent change is never overwritten.
            let updated = diesel::update(products::table.filter(products::id.eq(&id)))
                .filter(products::version.eq(current.version))
                .set((&changeset, products::version.eq(current.version + 1), products::updated_at.eq(clock::now())))
                .execute(conn)?;
            if updated == 0 {
                return Err(Refusal::ProductChanged.into());
            }
            let (product, event) = product_event(conn, &id, "product.updated")?;
            outbox.append(conn, vec![event])?;
            Ok(product)
        })
    }
}

/// Soft delete: reads answer 404, orders keep their snapshots.
pub struct DeleteProduct {
    pub id: Uuid,
}

impl UseCase for DeleteProduct {
    type Output = ();
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<(), DbError> {
        let id = self.id.to_string();
        conn.write_transaction(|conn| {
            let now = clock::now();
            let deleted =
                diesel::update(products::table.filter(products::id.eq(&id)).filter(products::deleted_at.is_null()))
                    .set((
                        products::deleted_at.eq(Some(now)),
                        products::updated_at.eq(now),
                        products::version.eq(products::version + 1),
                    ))
                    .execute(conn)?;
            if deleted == 0 {
                return Err(not_found());
            }
            outbox
                .append(conn, vec![NewEvent::public(topic::PRODUCTS, "product.deleted", serde_json::json!({"id": id}))])
        })
    }
}

pub struct ListProducts {
    pub filter: ProductFilter,
    pub page: PageRequest,
}

impl UseCase for ListProducts {
    type Output = Page<Product>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Page<Product>, DbError> {
        let filter = &self.filter;
        let query = || {
            let mut query = products::table.filter(products::deleted_at.is_null()).into_boxed();
            if let Some(needle) = &filter.name_contains {
                query = query.filter(products::name_folded.like(contains_pattern(needle)).escape('\\'));
            }
            if let Some(status) = filter.status {
                query = query.filter(products::status.eq(status.as_str()));
            }
            if let Some(min) = filter.min_price_cents {
                query = query.filter(products::price_cents.ge(min));
            }
            if let Some(max) = filter.max_price_cents {
                query = query.filter(products::price_cents.le(max));
            }
            query
        };
        let total: i64 = query().count().get_result(conn)?;
        let ordered = match (filter.sort, filter.descending) {
            (ProductSort::CreatedAt, false) => query().order((products::created_at.asc(), products::id.asc())),
            (ProductSort::CreatedAt, true) => query().order((products::created_at.desc(), products::id.desc())),
            (ProductSort::Name, false) => query().order((products::name_folded.asc(), products::id.asc())),
            (ProductSort::Name, true) => query().order((products::name_folded.desc(), products::id.desc())),
            (ProductSort::Price, false) => query().order((products::price_cents.asc(), products::id.asc())),
            (ProductSort::Price, true) => query().order((products::price_cents.desc(), products::id.desc())),
        };
        let rows: Vec<ProductRow> =
            ordered.limit(self.page.limit()).offset(self.page.offset()).select(ProductRow::as_select()).load(conn)?;
        let products = rows.into_iter().map(ProductRow::into_product).collect::<Result<_, _>>()?;
        Ok(Page::new(products, self.page, total))
    }
}
