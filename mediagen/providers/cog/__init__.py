"""Cog: models on your own GPU servers (`provider`), their webhooks and uploads (`webhooks`),
the slots and queues that keep their capacity (`slots`, `capacity`), prediction ids and webhook
tokens (`ids`), and outputs on their way to storage (`outputs`)."""
