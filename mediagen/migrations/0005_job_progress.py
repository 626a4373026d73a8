from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('jobs', '0004_idempotency_keys')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Job',
            name='progress',
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
        ops.AddIndex(
            model_name='Job',
            index=Index(fields=['status', 'created_at'], name='jobs_status_created_idx'),
        ),
    ]
