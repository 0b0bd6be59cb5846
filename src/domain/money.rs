//! Money rules: amounts are whole cents in an i64, never negative, never overflowing.
//! (Balances themselves change only through conditional UPDATEs in `db::shop`, which is
//! what keeps them from going negative under concurrency.)

use super::FieldError;

/// The largest single deposit or transfer: ten billion in currency units.
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000;

pub fn validate_amount(field: &str, amount_cents: i64) -> Result<(), FieldError> {
    if (1..=MAX_AMOUNT_CENTS).contains(&amount_cents) {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("must be between 1 and {MAX_AMOUNT_CENTS}")))
    }
}

/// Σ unit price × quantity, or `None` when it does not fit in an i64.
pub fn order_total(lines: &[(i64, i64)]) -> Option<i64> {
    lines.iter().try_fold(0_i64, |total, &(unit_price, quantity)| total.checked_add(unit_price.checked_mul(quantity)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn totals_are_exact_or_refused(lines in proptest::collection::vec((0..=i64::MAX / 2, 1..=1000_i64), 1..100)) {
            let exact: i128 = lines.iter().map(|&(p, q)| i128::from(p) * i128::from(q)).sum();
            match order_total(&lines) {
                Some(total) => prop_assert_eq!(i128::from(total), exact),
                None => prop_assert!(exact > i128::from(i64::MAX)),
            }
        }

        #[test]
        fn amounts_outside_the_range_are_refused(amount in any::<i64>()) {
            prop_assert_eq!(validate_amount("amount_cents", amount).is_ok(), amount > 0 && amount <= MAX_AMOUNT_CENTS);
        }
    }
}
