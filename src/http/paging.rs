//! The `?page=&per_page=` query every plain list accepts.

use serde::Deserialize;
use utoipa::IntoParams;

use crate::{domain::paging::PageRequest, http::error::AppError};

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 4294967295_i64)]
    pub page: Option<i64>,
    /// Items per page, 1 or more (values over 100 are clamped to 100).
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub per_page: Option<i64>,
}

impl PageQuery {
    pub fn to_request(&self) -> Result<PageRequest, AppError> {
        PageRequest::new(self.page, self.per_page).map_err(AppError::Validation)
    }
}
