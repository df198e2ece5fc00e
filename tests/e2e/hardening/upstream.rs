//! Hardening regressions: upstream.

#[allow(unused_imports)]
use super::*;
