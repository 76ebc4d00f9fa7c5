"""Pure exchange-simulator domain: IOC matching against a depth book (no I/O)."""
