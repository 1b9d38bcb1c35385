//! Fuzz bodies (private feature `_fuzz`): shared by `fuzz/` and the stable corpus replay test.
