"""Usage: what a key's jobs (or everyone's) did and cost over a range of days."""
