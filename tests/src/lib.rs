//! Harness for Shoal's integration tests.
