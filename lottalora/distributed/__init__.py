"""lottalora across processes."""
