//! The real `orch` binary, run as a user would.

mod run_component;
