//! Paging rules shared by every list: `page` from 1, `per_page` 1..=100 (larger clamped).

use serde::Serialize;
use utoipa::ToSchema;

use super::FieldError;

pub const DEFAULT_PER_PAGE: u32 = 20;
pub const MAX_PER_PAGE: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub per_page: u32,
}

impl PageRequest {
    pub fn new(page: Option<i64>, per_page: Option<i64>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let page = page.unwrap_or(1);
        if !(1..=i64::from(u32::MAX)).contains(&page) {
            errors.push(FieldError::new("page", "must be 1 or more"));
        }
        let per_page = per_page.unwrap_or(i64::from(DEFAULT_PER_PAGE));
        if per_page < 1 {
            errors.push(FieldError::new("per_page", "must be 1 or more"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            page: u32::try_from(page).unwrap_or(1),
            per_page: u32::try_from(per_page.min(i64::from(MAX_PER_PAGE))).unwrap_or(MAX_PER_PAGE),
        })
    }

    pub fn offset(&self) -> i64 {
        (i64::from(self.page) - 1) * i64::from(self.per_page)
    }

    pub fn limit(&self) -> i64 {
        i64::from(self.per_page)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub page: u32,
    pub per_page: u32,
    pub total: i64,
    pub total_pages: i64,
}

impl<T> Page<T> {
    pub fn new(data: Vec<T>, request: PageRequest, total: i64) -> Self {
        let per_page = i64::from(request.per_page);
        Self {
            data,
            page: request.page,
            per_page: request.per_page,
            total,
            total_pages: (total + per_page - 1) / per_page,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_clamping_and_rejections() {
        assert_eq!(PageRequest::new(None, None).unwrap(), PageRequest { page: 1, per_page: 20 });
        assert_eq!(PageRequest::new(Some(3), Some(1000)).unwrap(), PageRequest { page: 3, per_page: 100 });
        assert_eq!(PageRequest::new(Some(0), Some(0)).unwrap_err().len(), 2);
        assert_eq!(PageRequest::new(Some(2), Some(10)).unwrap().offset(), 10);
    }

    #[test]
    fn total_pages_rounds_up() {
        let request = PageRequest { page: 1, per_page: 20 };
        assert_eq!(Page::<()>::new(vec![], request, 0).total_pages, 0);
        assert_eq!(Page::<()>::new(vec![], request, 20).total_pages, 1);
        assert_eq!(Page::<()>::new(vec![], request, 21).total_pages, 2);
    }
}
