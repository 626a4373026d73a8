"""The paused models: Postgres keeps them (what an operator said outlives Redis), and the
queues in Redis follow (`mediagen.scheduling.control`)."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class ModelPause(Model):
    model = fields.CharField(max_length=200, primary_key=True)
    paused_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "model_pauses"
