"""Pure parts of the chaos harness: the fill plan, the fold of fills, the checks, the report."""
