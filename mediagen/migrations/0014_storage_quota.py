from tortoise import migrations
from tortoise.migrations import operations as ops
from uuid import uuid4
from tortoise import fields

ANONYMOUS = "'00000000-0000-0000-0000-000000000000'::uuid"

# Every key (and the anonymous scope) that keeps input files now starts with their bytes.
BACKFILL = [
    f"""INSERT INTO storage_counters (scope, bytes)
        SELECT coalesce(api_key_id, {ANONYMOUS}), sum(size) FROM files GROUP BY 1
        ON CONFLICT (scope) DO UPDATE SET bytes = EXCLUDED.bytes""",
]


class Migration(migrations.Migration):
    dependencies = [('jobs', '0013_replicate_api')]

    initial = False

    operations = [
        ops.CreateModel(
            name='StorageCounter',
            fields=[
                ('scope', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('bytes', fields.BigIntField(default=0)),
            ],
            options={'table': 'storage_counters', 'app': 'jobs', 'pk_attr': 'scope', 'table_description': 'Bytes of input files kept per API key (`ANONYMOUS` for keyless callers).'},
            bases=['Model'],
        ),
        ops.RunSQL(BACKFILL, reverse_sql=""),
    ]
