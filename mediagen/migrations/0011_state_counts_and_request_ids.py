from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

ANONYMOUS = "'00000000-0000-0000-0000-000000000000'::uuid"

# The unfinished jobs by state, counted once into the shard that counts each job; from here
# on the transitions keep them (mediagen.jobs.repository).
BACKFILL = [
    f"""UPDATE job_counters SET
            pending = coalesce(counted.pending, 0),
            processing = coalesce(counted.processing, 0),
            retrying = coalesce(counted.retrying, 0)
        FROM (SELECT coalesce(api_key_id, {ANONYMOUS}) AS scope, quota_shard AS shard,
                     count(*) FILTER (WHERE status = 'pending') AS pending,
                     count(*) FILTER (WHERE status = 'processing') AS processing,
                     count(*) FILTER (WHERE status = 'retrying') AS retrying
              FROM jobs WHERE status IN ('pending', 'processing', 'retrying')
              GROUP BY 1, 2) AS counted
        WHERE job_counters.scope = counted.scope AND job_counters.shard = counted.shard""",
]


class Migration(migrations.Migration):
    dependencies = [('jobs', '0010_upstream_cancels')]

    initial = False

    operations = [
        ops.AddField(
            model_name='JobCounter',
            name='pending',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='JobCounter',
            name='processing',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='JobCounter',
            name='retrying',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Job',
            name='request_id',
            field=fields.CharField(null=True, max_length=128),
        ),
        ops.AddField(
            model_name='Job',
            name='traceparent',
            field=fields.CharField(null=True, max_length=64),
        ),
        ops.RunSQL(BACKFILL, reverse_sql=""),
    ]
