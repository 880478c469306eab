//! The category of an error or a refusal: a short, static label from a small fixed set, the
//! same in metrics labels, Event and condition reasons and logs (kube-rs controller-rs calls it
//! `metric_label`). Every error type of the library implements [`Category`].

/// A short, bounded, static category (e.g. `api_error`, `pool_exhausted`).
pub trait Category {
    fn category(&self) -> &'static str;
}
