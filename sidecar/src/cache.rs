//! Response caching (the exact cache lands on the `cache` branch).

pub mod semantic;
