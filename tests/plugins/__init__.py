"""Head types defined by the tests, to prove a new head type is one file plus its registry entry."""
