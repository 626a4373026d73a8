from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

UNFINISHED = "('pending', 'processing', 'retrying')"
ANONYMOUS = "'00000000-0000-0000-0000-000000000000'::uuid"

# Every key (and the anonymous scope) gets its 16 shards; the jobs unfinished now are counted
# in shard 0, which they name as theirs.
BACKFILL = [
    f"UPDATE jobs SET quota_shard = 0 WHERE status IN {UNFINISHED}",
    f"""INSERT INTO job_counters (scope, shard, unfinished)
        SELECT scopes.scope, g, 0
        FROM (SELECT {ANONYMOUS} AS scope UNION SELECT id FROM api_keys) AS scopes
        CROSS JOIN generate_series(0, 15) AS g
        ON CONFLICT (scope, shard) DO NOTHING""",
    f"""UPDATE job_counters SET unfinished = counted.n
        FROM (SELECT coalesce(api_key_id, {ANONYMOUS}) AS scope, count(*) AS n
              FROM jobs WHERE status IN {UNFINISHED} GROUP BY 1) AS counted
        WHERE job_counters.scope = counted.scope AND job_counters.shard = 0""",
]


class Migration(migrations.Migration):
    dependencies = [('jobs', '0006_client_webhooks')]

    initial = False

    operations = [
        ops.CreateModel(
            name='JobCounter',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('scope', fields.UUIDField()),
                ('shard', fields.SmallIntField()),
                ('unfinished', fields.IntField(default=0)),
            ],
            options={'table': 'job_counters', 'app': 'jobs', 'unique_together': (('scope', 'shard'),), 'pk_attr': 'id', 'table_description': 'Unfinished jobs per API key (`ANONYMOUS` for keyless callers), in COUNTER_SHARDS rows.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Job',
            name='quota_shard',
            field=fields.SmallIntField(null=True),
        ),
        ops.RunSQL(BACKFILL, reverse_sql=""),
    ]
