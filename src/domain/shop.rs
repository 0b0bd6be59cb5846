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

/// A product as an order found it: `None` in its place when it is missing or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductOnSale {
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub active: bool,
}

/// An order that may be placed: its items in the lines' order, and their total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
}

/// Why an order is refused. Several may apply; `price_order` gives the first in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRefusal {
    /// The lines (by index, ascending) whose product is missing, deleted or not active.
    UnavailableProducts { lines: Vec<usize> },
    /// The products (in id order) with less stock than their line asks for.
    InsufficientStock { product_ids: Vec<Uuid> },
    /// The total does not fit in an i64 of cents.
    TotalTooLarge,
    /// The balance does not cover the total (or there is no account).
    InsufficientFunds,
}

/// The order rule, the same for both backends: `products[i]` is what was found for
/// `lines[i]`, `balance_cents` what the account held (`None` without one). Refusals in this
/// precedence: products that cannot be ordered, then short stock, then a total that does
/// not fit, then the balance.
pub fn price_order(
    lines: &[OrderLine],
    products: &[Option<ProductOnSale>],
    balance_cents: Option<i64>,
) -> Result<PricedOrder, OrderRefusal> {
    let mut unavailable = Vec::new();
    let mut short = Vec::new();
    let mut items = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match products.get(index) {
            Some(Some(product)) if product.active => {
                if product.stock < line.quantity {
                    short.push(line.product_id);
                }
                items.push(OrderItem {
                    product_id: line.product_id,
                    name: product.name.clone(),
                    unit_price_cents: product.price_cents,
                    quantity: line.quantity,
                });
            }
            _ => unavailable.push(index),
        }
    }
    if !unavailable.is_empty() {
        return Err(OrderRefusal::UnavailableProducts { lines: unavailable });
    }
    if !short.is_empty() {
        short.sort_unstable();
        return Err(OrderRefusal::InsufficientStock { product_ids: short });
    }
    let priced: Vec<(i64, i64)> = items.iter().map(|item| (item.unit_price_cents, item.quantity)).collect();
    let total_cents = super::money::order_total(&priced).ok_or(OrderRefusal::TotalTooLarge)?;
    if balance_cents.is_none_or(|balance| balance < total_cents) {
        return Err(OrderRefusal::InsufficientFunds);
    }
    Ok(PricedOrder { items, total_cents })
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
    fn on_sale(price_cents: i64, stock: i64) -> Option<ProductOnSale> {
        Some(ProductOnSale { name: format!("at {price_cents}"), price_cents, stock, active: true })
    }

    fn lines(quantities: &[i64]) -> Vec<OrderLine> {
        quantities.iter().map(|&quantity| OrderLine { product_id: Uuid::now_v7(), quantity }).collect()
    }

    #[test]
    fn an_order_is_priced_line_by_line_in_the_lines_order() {
        let lines = lines(&[2, 3]);
        let priced = price_order(&lines, &[on_sale(350, 10), on_sale(120, 3)], Some(1060)).unwrap();
        assert_eq!(priced.total_cents, 1060);
        let items: Vec<_> = priced.items.iter().map(|i| (i.product_id, i.unit_price_cents, i.quantity)).collect();
        assert_eq!(items, [(lines[0].product_id, 350, 2), (lines[1].product_id, 120, 3)]);
        assert_eq!(priced.items[0].name, "at 350");
    }

    #[test]
    fn unavailable_products_come_before_short_stock_short_stock_before_an_oversized_total_and_that_before_funds() {
        let lines = lines(&[5, 1, 1, 1]);
        let archived = Some(ProductOnSale { active: false, ..on_sale(1, 100).unwrap() });
        let everything_wrong = [on_sale(i64::MAX, 1), None, archived.clone(), on_sale(1, 0)];
        assert_eq!(
            price_order(&lines, &everything_wrong, Some(0)),
            Err(OrderRefusal::UnavailableProducts { lines: vec![1, 2] })
        );
        let mut short_ids = vec![lines[0].product_id, lines[3].product_id];
        short_ids.sort();
        let short_and_too_dear = [on_sale(i64::MAX, 1), on_sale(1, 1), on_sale(1, 1), on_sale(1, 0)];
        assert_eq!(
            price_order(&lines, &short_and_too_dear, Some(0)),
            Err(OrderRefusal::InsufficientStock { product_ids: short_ids })
        );
        let too_dear = [on_sale(i64::MAX, 5), on_sale(1, 1), on_sale(1, 1), on_sale(1, 1)];
        assert_eq!(price_order(&lines, &too_dear, Some(0)), Err(OrderRefusal::TotalTooLarge));
        let affordable = [on_sale(10, 5), on_sale(1, 1), on_sale(1, 1), on_sale(1, 1)];
        assert_eq!(price_order(&lines, &affordable, Some(52)), Err(OrderRefusal::InsufficientFunds));
        assert_eq!(price_order(&lines, &affordable, Some(53)).map(|order| order.total_cents), Ok(53));
    }

    #[test]
    fn without_an_account_nothing_can_be_paid_for() {
        assert_eq!(price_order(&lines(&[1]), &[on_sale(0, 1)], None), Err(OrderRefusal::InsufficientFunds));
        assert!(price_order(&lines(&[1]), &[on_sale(0, 1)], Some(0)).is_ok());
    }

    #[test]
    fn stock_suffices_when_it_equals_the_quantity() {
        assert!(price_order(&lines(&[3]), &[on_sale(1, 3)], Some(3)).is_ok());
        assert!(matches!(
            price_order(&lines(&[4]), &[on_sale(1, 3)], Some(4)),
            Err(OrderRefusal::InsufficientStock { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn a_priced_total_is_exactly_the_sum_of_its_lines_or_too_large(
            priced in proptest::collection::vec((0..=i64::MAX / 4, 1..=MAX_LINE_QUANTITY), 1..=MAX_ORDER_LINES)
        ) {
            let lines = lines(&priced.iter().map(|&(_, quantity)| quantity).collect::<Vec<_>>());
            let products: Vec<_> = priced.iter().map(|&(price, quantity)| on_sale(price, quantity)).collect();
            let exact: i128 = priced.iter().map(|&(price, quantity)| i128::from(price) * i128::from(quantity)).sum();
            match price_order(&lines, &products, Some(i64::MAX)) {
                Ok(order) => proptest::prop_assert_eq!(i128::from(order.total_cents), exact),
                Err(refusal) => {
                    proptest::prop_assert_eq!(refusal, OrderRefusal::TotalTooLarge);
                    proptest::prop_assert!(exact > i128::from(i64::MAX));
                }
            }
        }
    }
}
