"""Pure portfolio domain: values, position arithmetic and the account ledger (no I/O)."""
