"""The built-in generator: real images drawn offline (`render`, with Pillow: the `builtin`
extra), behind the provider interface (`provider`)."""
