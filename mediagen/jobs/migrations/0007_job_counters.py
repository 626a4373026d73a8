from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

# The counters start from the rows as they are: every unfinished job counted once per key.
BACKFILL = """
INSERT INTO job_counters (scope, unfinished)
SELECT coalesce(api_key_id, '00000000-0000-0000-0000-000000000000'::uuid), count(*)
FROM jobs WHERE status IN ('pending', 'processing', 'retrying')
GROUP BY 1
ON CONFLICT (scope) DO UPDATE SET unfinished = EXCLUDED.unfinished
"""


class Migration(migrations.Migration):
    dependencies = [('jobs', '0006_client_webhooks')]

    initial = False

    operations = [
        ops.CreateModel(
            name='JobCounter',
            fields=[
                ('scope', fields.UUIDField(primary_key=True, unique=True, db_index=True)),
                ('unfinished', fields.IntField(default=0)),
            ],
            options={'table': 'job_counters', 'app': 'jobs', 'pk_attr': 'scope', 'table_description': 'Unfinished jobs per API key (`ANONYMOUS` for keyless callers).'},
            bases=['Model'],
        ),
        ops.RunSQL(BACKFILL, reverse_sql=""),
    ]
