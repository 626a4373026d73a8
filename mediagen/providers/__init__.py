"""Generation providers: the interface every provider implements (`base`), the registry that
gives each job the one its row names (`registry`), and one package per kind: the built-in
generator (`builtin`), Replicate (`replicate`) and self-hosted Cog servers (`cog`)."""
