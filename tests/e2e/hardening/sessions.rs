//! Hardening regressions: sessions.

#[allow(unused_imports)]
use super::*;
