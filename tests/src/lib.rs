//! Shared helpers for the cross-crate tests of Kairos Fleet.
