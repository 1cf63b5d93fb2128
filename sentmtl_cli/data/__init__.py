"""Task data: readers by format (registry.READERS) and typed examples with a seeded split."""
