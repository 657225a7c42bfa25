//! What a control API call on the controller fails with, in the controller's words. Only
//! `api.rs` turns it into an HTTP status.

/// Why a call on the controller did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The cluster is shutting down and takes no more changes.
    #[error("the cluster is stopping")]
    Stopping,
    /// The controller is gone: orch is exiting.
    #[error("orch is stopping")]
    Gone,
    /// The call names a service, instance or experiment the cluster does not have.
    #[error("{0}")]
    NotFound(String),
    /// The call is invalid whatever the cluster's state.
    #[error("{0}")]
    Invalid(String),
    /// The call does not fit the cluster's present state.
    #[error("{0}")]
    Conflict(String),
    /// The manifest to apply cannot be read or is invalid.
    #[error("{0}")]
    Manifest(String),
    /// A component (the balancer) did not do its part.
    #[error("{0}")]
    Upstream(String),
}
