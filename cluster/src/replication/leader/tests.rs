//! Unit tests of the leader's rules, one per rule.
