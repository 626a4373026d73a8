"""Replicate: predictions on replicate.com (`provider`), and its signed webhooks (`webhooks`,
checked by `signatures`)."""
