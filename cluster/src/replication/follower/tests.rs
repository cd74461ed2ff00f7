//! Unit tests of the follower's rules.
