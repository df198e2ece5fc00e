//! Hardening regressions: admin.

#[allow(unused_imports)]
use super::*;
