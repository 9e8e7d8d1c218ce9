//! capsd-tests: the conformance suite every driver runs against itself (issue 5).
