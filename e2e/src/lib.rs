//! End-to-end tests of the real `orch` binary live in `tests/`.
