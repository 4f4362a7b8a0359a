//! Errors of the layer's settings.

use std::{error::Error, fmt};

/// A service-time sampling rate that is not a power of two.
///
/// Returned by [`ServiceTime::one_in`](super::ServiceTime::one_in).
///
/// ```
/// use hermes_tower::ServiceTime;
///
/// let err = ServiceTime::one_in(10).unwrap_err();
/// assert_eq!(err.requested(), 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidSampleRate {
    requested: u32,
}

impl InvalidSampleRate {
    pub(crate) const fn new(requested: u32) -> Self {
        Self { requested }
    }

    /// The rate that was asked for.
    pub fn requested(&self) -> u32 {
        self.requested
    }
}

impl fmt::Display for InvalidSampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service time can be measured on one request in a power of two (1, 2, 4, ... 2^31), not one in {}; \
             use ServiceTime::OFF to measure none",
            self.requested
        )
    }
}

impl Error for InvalidSampleRate {}
