//! `orch verify`: Jepsen-style consistency checking of the running cluster under its own
//! faults.

pub mod checker;
pub mod history;
