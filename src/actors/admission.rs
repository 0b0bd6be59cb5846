//! Bounded admission in front of an unbounded SyncArbiter queue: at most `capacity`
//! requests wait or run; the rest are refused at once. A slot is given back when its
//! guard drops, however the request ends (answered, timed out, or abandoned).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use prometheus::IntGauge;

pub struct Admission {
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    gauge: Option<IntGauge>,
}

pub struct AdmissionSlot {
    in_flight: Arc<AtomicUsize>,
    gauge: Option<IntGauge>,
}

impl Admission {
    pub fn new(capacity: usize, gauge: Option<IntGauge>) -> Self {
        Self { in_flight: Arc::new(AtomicUsize::new(0)), capacity, gauge }
    }

    pub fn try_admit(&self) -> Option<AdmissionSlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < self.capacity).then_some(current + 1)
            })
            .ok()?;
        if let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        Some(AdmissionSlot { in_flight: Arc::clone(&self.in_flight), gauge: self.gauge.clone() })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= self.capacity
    }
}

impl Drop for AdmissionSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}
