//! The Kairos versioning policy, made executable.
