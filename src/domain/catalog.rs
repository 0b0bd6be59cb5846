//! Products: their shape, the rules for creating and changing them, and list filters.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::FieldError;

pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 2000;
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProductStatus {
    Active,
    Archived,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Product {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub stock: i64,
    pub status: ProductStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change; the ETag is made from it.
    #[serde(skip)]
    pub version: i64,
}

impl Product {
    pub fn etag(&self) -> String {
        etag_for(self.version)
    }
}

/// A product as `GET /api/v1/products/{id}` answers it, serialised once when it is read
/// from the database: a cached read shares these bytes instead of cloning the product and
/// serialising it again on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedProduct {
    pub version: i64,
    /// The JSON body.
    pub json: Bytes,
    /// The `ETag` value, quoted.
    pub etag: Bytes,
}

impl RenderedProduct {
    pub fn of(product: &Product) -> Result<Self, serde_json::Error> {
        Ok(Self {
            version: product.version,
            json: Bytes::from(serde_json::to_vec(product)?),
            etag: Bytes::from(product.etag()),
        })
    }
}

pub fn etag_for(version: i64) -> String {
    format!("\"{version}\"")
}

/// `If-None-Match`: weak comparison (RFC 9110 13.1.2), so `W/"3"` names version 3.
pub fn none_match_hits(header: &str, version: i64) -> bool {
    let current = etag_for(version);
    header.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == current)
}

/// An `If-Match` precondition (RFC 9110 13.1.1), parsed: `*`, or entity tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    /// Each tag's opaque part (between the quotes) and whether it was weak (`W/"…"`).
    Tags(Vec<(bool, String)>),
}

/// What `IfMatch::parse` accepts, as a regular expression (stated in the OpenAPI document).
pub const IF_MATCH_PATTERN: &str =
    r#"^(?:\*|[ \t]*(?:(?:W/)?"[!#-~]*")?(?:[ \t]*,[ \t]*(?:(?:W/)?"[!#-~]*")?)*[ \t]*)$"#;

impl IfMatch {
    /// `*`, or a list of entity tags (`"…"` or `W/"…"`, visible ASCII but `"` inside)
    /// separated by commas, with optional spaces or tabs around them and, as RFC 9110's
    /// list syntax says, empty elements allowed (so an empty value is an empty list, which
    /// no version matches); `None` for anything else.
    pub fn parse(header: &str) -> Option<Self> {
        if header == "*" {
            return Some(Self::Any);
        }
        let is_etagc = |c: char| c == '!' || ('#'..='~').contains(&c);
        let skip_space = |text: &str| text.trim_start_matches([' ', '\t']).len();
        let mut tags = Vec::new();
        let mut rest = header.trim_start_matches([' ', '\t']);
        loop {
            if !rest.starts_with(',') && !rest.is_empty() {
                let weak = rest.starts_with("W/");
                let quoted = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
                let end = quoted.find(|c: char| !is_etagc(c))?;
                tags.push((weak, quoted[..end].to_owned()));
                rest = quoted[end..].strip_prefix('"')?;
                rest = &rest[rest.len() - skip_space(rest)..];
            }
            if rest.is_empty() {
                return Some(Self::Tags(tags));
            }
            rest = rest.strip_prefix(',')?.trim_start_matches([' ', '\t']);
        }
    }

    /// Strong comparison: a weak tag never matches.
    pub fn holds(&self, version: i64) -> bool {
        let current = version.to_string();
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|(weak, tag)| !weak && *tag == current),
        }
    }
}

/// The checked fields of a product change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
    pub status: Option<ProductStatus>,
}

/// Raw fields as a client sent them, for create (all given) or patch (any subset).
#[derive(Debug, Default)]
pub struct ProductInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
    pub status: Option<String>,
}

impl ProductInput {
    pub fn validate(self) -> Result<ProductChanges, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = self.name.and_then(|raw| {
            super::text::normalize_name("name", &raw, NAME_MAX_CHARS).map_err(|error| errors.push(error)).ok()
        });
        if let Some(description) = &self.description {
            if description.chars().count() > DESCRIPTION_MAX_CHARS {
                errors.push(FieldError::new(
                    "description",
                    format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
                ));
            }
        }
        if self.price_cents.is_some_and(|price| !(0..=MAX_PRICE_CENTS).contains(&price)) {
            errors.push(FieldError::new("price_cents", format!("must be between 0 and {MAX_PRICE_CENTS}")));
        }
        if self.stock.is_some_and(|stock| !(0..=MAX_STOCK).contains(&stock)) {
            errors.push(FieldError::new("stock", format!("must be between 0 and {MAX_STOCK}")));
        }
        let status = match self.status.as_deref().map(ProductStatus::parse) {
            None => None,
            Some(Some(status)) => Some(status),
            Some(None) => {
                errors.push(FieldError::new("status", "must be active or archived"));
                None
            }
        };
        if errors.is_empty() {
            Ok(ProductChanges {
                name,
                description: self.description,
                price_cents: self.price_cents,
                stock: self.stock,
                status,
            })
        } else {
            Err(errors)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductSort {
    CreatedAt,
    Name,
    Price,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductFilter {
    /// Case-insensitive substring of the name, matched literally.
    pub name_contains: Option<String>,
    pub status: Option<ProductStatus>,
    pub min_price_cents: Option<i64>,
    pub max_price_cents: Option<i64>,
    pub sort: ProductSort,
    pub descending: bool,
}

impl ProductFilter {
    pub fn parse(
        q: Option<&str>,
        status: Option<&str>,
        min_price_cents: Option<i64>,
        max_price_cents: Option<i64>,
        sort: Option<&str>,
        order: Option<&str>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let status = match status {
            None => None,
            Some(raw) => ProductStatus::parse(raw).or_else(|| {
                errors.push(FieldError::new("status", "must be active or archived"));
                None
            }),
        };
        let sort = match sort.unwrap_or("created_at") {
            "created_at" => ProductSort::CreatedAt,
            "name" => ProductSort::Name,
            "price_cents" => ProductSort::Price,
            _ => {
                errors.push(FieldError::new("sort", "must be created_at, name or price_cents"));
                ProductSort::CreatedAt
            }
        };
        let descending = match order.unwrap_or("desc") {
            "desc" => true,
            "asc" => false,
            _ => {
                errors.push(FieldError::new("order", "must be asc or desc"));
                true
            }
        };
        // A minimum above the maximum is an empty range, not a mistake a schema could name:
        // it matches nothing, like any other range no product falls in.
        for (field, value) in [("min_price_cents", min_price_cents), ("max_price_cents", max_price_cents)] {
            if value.is_some_and(|v| v < 0) {
                errors.push(FieldError::new(field, "must be 0 or more"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let name_contains = q.map(str::trim).filter(|q| !q.is_empty()).map(fold);
        Ok(Self { name_contains, status, min_price_cents, max_price_cents, sort, descending })
    }
}

/// A name folded for case-insensitive search and sorting, the same way on every backend.
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

/// A LIKE pattern that matches `needle` literally anywhere (escape character `\`).
pub fn contains_pattern(needle: &str) -> String {
    let escaped: String = needle
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            other => vec![other],
        })
        .collect();
    format!("%{escaped}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_weakly_for_none_match_and_strongly_for_match() {
        assert!(none_match_hits("\"3\"", 3));
        assert!(none_match_hits("W/\"3\"", 3));
        assert!(none_match_hits("\"1\", \"3\"", 3));
        assert!(none_match_hits("*", 3));
        assert!(!none_match_hits("\"4\"", 3));
        let holds = |header: &str| IfMatch::parse(header).unwrap().holds(3);
        assert!(holds("\"3\""));
        assert!(holds("*"));
        assert!(holds("\"1\" ,\t\"3\""));
        assert!(!holds("W/\"3\""), "If-Match compares strongly");
        assert!(!holds("\"4\", W/\"3\""));
    }

    #[test]
    fn if_match_syntax_is_the_rfcs() {
        assert_eq!(IfMatch::parse("\"a,b\""), Some(IfMatch::Tags(vec![(false, "a,b".into())])));
        assert_eq!(IfMatch::parse("\"\""), Some(IfMatch::Tags(vec![(false, String::new())])));
        let no_tags = Some(IfMatch::Tags(Vec::new()));
        assert_eq!(IfMatch::parse(""), no_tags, "an empty list, which nothing matches");
        assert_eq!(IfMatch::parse(" , ,"), no_tags);
        assert_eq!(IfMatch::parse(", \"3\" ,"), Some(IfMatch::Tags(vec![(false, "3".into())])));
        assert!(!IfMatch::parse("").unwrap().holds(3));
        for malformed in
            ["3", "\"3", "3\"", "\"3\" \"4\"", "\"3\"\"4\"", "w/\"3\"", "**", "\"é\"", "\"a b\"", " *", "*, \"3\""]
        {
            assert_eq!(IfMatch::parse(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn product_input_reports_every_bad_field() {
        let input = ProductInput {
            name: Some("  ".into()),
            description: Some("d".repeat(2001)),
            price_cents: Some(-1),
            stock: Some(MAX_STOCK + 1),
            status: Some("gone".into()),
        };
        assert_eq!(input.validate().unwrap_err().len(), 5);
    }
}
