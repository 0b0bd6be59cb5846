//! Counts and times every request by method, route pattern and status. The route is the
//! matched pattern (`/api/v1/products/{id}`), never the raw path, so label sets stay small.

use std::{cell::RefCell, collections::HashMap, sync::Arc, time::Duration};

use actix_web::http::{Method, StatusCode};
use prometheus::{Histogram, IntCounter};

use crate::metrics::Metrics;

/// Only standard methods become label values: a client must not mint time series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// One HTTP worker's handles to the counter and the timer of each label set, resolved on
/// first use. Resolving them in the registry on every request takes its lock and clones a
/// reference count, both shared by all workers. Built in each worker's app factory and
/// never shared between threads; it holds handles to the registry's metrics, nothing else.
pub struct RequestMetrics {
    metrics: Arc<Metrics>,
    routes: RefCell<HashMap<String, RouteHandles>>,
}

/// The label sets are bounded: routes are patterns, methods and statuses are fixed lists.
#[derive(Default)]
struct RouteHandles {
    counters: Vec<(&'static str, StatusCode, IntCounter)>,
    timers: Vec<(&'static str, Histogram)>,
}

impl RequestMetrics {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, routes: RefCell::default() }
    }

    pub fn record(&self, method: &'static str, route: &str, status: StatusCode, duration: Duration) {
        let mut routes = self.routes.borrow_mut();
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteHandles::default());
        }
        let Some(handles) = routes.get_mut(route) else { return };
        let counter = match handles.counters.iter().position(|(m, s, _)| *m == method && *s == status) {
            Some(at) => at,
            None => {
                let counter = self.metrics.http_requests.with_label_values(&[method, route, status.as_str()]);
                handles.counters.push((method, status, counter));
                handles.counters.len() - 1
            }
        };
        handles.counters[counter].2.inc();
        let timer = match handles.timers.iter().position(|(m, _)| *m == method) {
            Some(at) => at,
            None => {
                handles.timers.push((method, self.metrics.http_duration.with_label_values(&[method, route])));
                handles.timers.len() - 1
            }
        };
        handles.timers[timer].1.observe(duration.as_secs_f64());
    }
}
