from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [('jobs', '0015_job_output')]

    initial = False

    # The id of the job (or batch) an Idempotency-Key's claim creates, so that a retry can
    # answer for a request whose process died before storing its answer (mediagen.idempotency).
    operations = [
        ops.AddField(
            model_name='IdempotencyRecord',
            name='resource_id',
            field=fields.UUIDField(null=True),
        ),
    ]
