//! Hardening regressions: bodies.

#[allow(unused_imports)]
use super::*;
