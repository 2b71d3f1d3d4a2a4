//! Kairos Fleet node client.
#![deny(missing_docs)]
