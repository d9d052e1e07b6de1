"""Compare and benchmark: parity results, honest timing, the cross-backend benchmark and its reports."""
