//! Accounts, transfers and orders as the API shows them, and the rules for order requests.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::FieldError;

pub const MAX_ORDER_LINES: usize = 100;
pub const MAX_LINE_QUANTITY: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Account {
    pub user_id: Uuid,
    pub balance_cents: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Transfer {
    pub id: Uuid,
    pub from_user_id: Uuid,
    pub to_user_id: Uuid,
    pub amount_cents: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Paid,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "paid" => Some(Self::Paid),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrderItem {
    pub product_id: Uuid,
    pub name: String,
    pub unit_price_cents: i64,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub items: Vec<OrderItem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One checked line of an order request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// Checks an order request: 1–100 lines, quantities 1–1000, each product once.
pub fn validate_order_lines(raw: &[(String, i64)]) -> Result<Vec<OrderLine>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if raw.is_empty() || raw.len() > MAX_ORDER_LINES {
        errors.push(FieldError::new("items", format!("must hold 1 to {MAX_ORDER_LINES} items")));
    }
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(raw.len());
    for (index, (product_id, quantity)) in raw.iter().enumerate() {
        if !(1..=MAX_LINE_QUANTITY).contains(quantity) {
            errors
                .push(FieldError::new(format!("items[{index}].quantity"), format!("must be 1 to {MAX_LINE_QUANTITY}")));
        }
        match Uuid::parse_str(product_id) {
            Ok(id) if seen.insert(id) => lines.push(OrderLine { product_id: id, quantity: *quantity }),
            Ok(_) => errors.push(FieldError::new(format!("items[{index}].product_id"), "appears more than once")),
            Err(_) => errors.push(FieldError::new(format!("items[{index}].product_id"), "must be a product id")),
        }
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// Checks a transfer request: a positive amount, to a well-formed id of someone else.
pub fn validate_transfer(from: Uuid, to: &str, amount_cents: i64) -> Result<Uuid, Vec<FieldError>> {
    let mut errors: Vec<FieldError> =
        super::money::validate_amount("amount_cents", amount_cents).err().into_iter().collect();
    let to = match Uuid::parse_str(to) {
        Ok(to) if to == from => {
            errors.push(FieldError::new("to_user_id", "must be another user"));
            None
        }
        Ok(to) => Some(to),
        Err(_) => {
            errors.push(FieldError::new("to_user_id", "must be a user id"));
            None
        }
    };
    match to {
        Some(to) if errors.is_empty() => Ok(to),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lines_are_checked() {
        let id = Uuid::now_v7().to_string();
        assert_eq!(validate_order_lines(&[(id.clone(), 2)]).unwrap().len(), 1);
        assert_eq!(validate_order_lines(&[]).unwrap_err()[0].field, "items");
        let errors = validate_order_lines(&[(id.clone(), 0), (id, 1001), ("x".into(), 1)]).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["items[0].quantity", "items[1].quantity", "items[1].product_id", "items[2].product_id"]);
    }

    #[test]
    fn a_transfer_goes_to_someone_else_for_a_positive_amount() {
        let (me, you) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(validate_transfer(me, &you.to_string(), 5), Ok(you));
        let fields = |errors: Vec<FieldError>| errors.into_iter().map(|e| e.field).collect::<Vec<_>>();
        assert_eq!(fields(validate_transfer(me, &me.to_string(), 5).unwrap_err()), ["to_user_id"]);
        assert_eq!(fields(validate_transfer(me, "x", 0).unwrap_err()), ["amount_cents", "to_user_id"]);
    }
}
