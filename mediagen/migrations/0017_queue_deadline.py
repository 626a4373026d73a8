from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

# The sweeper's look for pending jobs past their queue deadline (mediagen.jobs.sweeper): partial,
# so jobs without a deadline, and every job once it started or finished, cost it nothing.
QUEUE_DEADLINE_INDEX = [
    "CREATE INDEX IF NOT EXISTS jobs_queue_deadline_idx ON jobs (queue_deadline) "
    "WHERE status = 'pending' AND queue_deadline IS NOT NULL",
]


class Migration(migrations.Migration):
    dependencies = [('jobs', '0016_idempotency_resource')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Job',
            name='queue_deadline',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Job',
            name='error_code',
            field=fields.CharField(null=True, max_length=32),
        ),
        ops.AddField(
            model_name='ApiKey',
            name='max_queue_seconds',
            field=fields.IntField(null=True),
        ),
        ops.RunSQL(QUEUE_DEADLINE_INDEX, reverse_sql=""),
    ]
