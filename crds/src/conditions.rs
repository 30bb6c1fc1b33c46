//! Status conditions.
