from tortoise import migrations
from tortoise.migrations import operations as ops
from mediagen.jobs.states import JobStatus, Priority
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

# Retention scans (mediagen.jobs.retention): completed jobs by when their outputs expire, and
# finished jobs by when they finished; partial, so unfinished jobs cost them nothing.
RETENTION_INDEXES = [
    "CREATE INDEX IF NOT EXISTS jobs_expiry_idx ON jobs (expires_at) "
    "WHERE status = 'completed' AND expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (completed_at) "
    "WHERE completed_at IS NOT NULL",
]


class Migration(migrations.Migration):
    dependencies = [('jobs', '0011_state_counts_and_request_ids')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Batch',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('api_key', fields.ForeignKeyField('jobs.ApiKey', source_field='api_key_id', null=True, db_constraint=True, to_field='id', related_name='batches', on_delete=OnDelete.RESTRICT)),
                ('size', fields.IntField()),
                ('webhook', fields.CharField(null=True, max_length=2000)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('canceled_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'batches', 'app': 'jobs', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='InputFile',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('api_key', fields.ForeignKeyField('jobs.ApiKey', source_field='api_key_id', null=True, db_constraint=True, to_field='id', related_name='files', on_delete=OnDelete.RESTRICT)),
                ('key', fields.CharField(max_length=512)),
                ('filename', fields.CharField(max_length=255)),
                ('content_type', fields.CharField(max_length=100)),
                ('size', fields.BigIntField()),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('expires_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'files', 'app': 'jobs', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='ApiKey',
            name='max_priority',
            field=fields.CharField(null=True, max_length=8),
        ),
        ops.AlterField(
            model_name='Job',
            name='status',
            field=fields.CharEnumField(default=JobStatus.PENDING, description='PENDING: pending\nPROCESSING: processing\nRETRYING: retrying\nCOMPLETED: completed\nFAILED: failed\nCANCELED: canceled\nEXPIRED: expired', enum_type=JobStatus, max_length=16),
        ),
        ops.AddField(
            model_name='Job',
            name='batch_id',
            field=fields.UUIDField(null=True),
        ),
        ops.AddField(
            model_name='Job',
            name='expires_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Job',
            name='input_files',
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
        ops.AddField(
            model_name='Job',
            name='logs',
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='Job',
            name='metrics',
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
        ops.AddField(
            model_name='Job',
            name='priority',
            field=fields.CharEnumField(default=Priority.NORMAL, db_default='normal', description='LOW: low\nNORMAL: normal\nHIGH: high', enum_type=Priority, max_length=8),
        ),
        ops.AddField(
            model_name='Job',
            name='retention_seconds',
            field=fields.IntField(null=True),
        ),
        ops.AddIndex(
            model_name='Job',
            index=Index(fields=['batch_id'], name='jobs_batch_idx'),
        ),
        ops.RunSQL(RETENTION_INDEXES, reverse_sql=""),
        # --- input files ---
        # --- batches ---
        ops.AddField(
            model_name='Job',
            name='batch_index',
            field=fields.SmallIntField(null=True),
        ),
        ops.AlterField(
            model_name='WebhookDelivery',
            name='job',
            field=fields.ForeignKeyField('jobs.Job', source_field='job_id', null=True, db_constraint=True, to_field='id', related_name='webhook_deliveries', on_delete=OnDelete.CASCADE),
        ),
        ops.AddField(
            model_name='WebhookDelivery',
            name='batch',
            field=fields.ForeignKeyField('jobs.Batch', source_field='batch_id', null=True, db_constraint=True, to_field='id', related_name='webhook_deliveries', on_delete=OnDelete.CASCADE),
        ),
        ops.AddIndex(
            model_name='WebhookDelivery',
            index=Index(fields=['batch_id'], name='webhook_deliveries_batch_idx'),
        ),
        # The sweeper's look for finished batches not yet marked (mediagen.batches.service).
        ops.RunSQL(
            ["CREATE INDEX IF NOT EXISTS batches_open_idx ON batches (created_at) "
             "WHERE completed_at IS NULL"],
            reverse_sql="",
        ),
        # --- priority and usage ---
        # --- logs and metrics ---
        ops.AddField(
            model_name='Job',
            name='logs_base',
            field=fields.IntField(null=True),
        ),
        # --- retention and deletion ---
        # The retention's scans by age (mediagen.jobs.retention): completed jobs by when they
        # completed (outputs kept past RESULT_TTL or JOB_RECORD_TTL), idempotency records, and
        # webhook deliveries that are done with.
        ops.RunSQL(
            [
                "CREATE INDEX IF NOT EXISTS jobs_completed_idx ON jobs (completed_at) "
                "WHERE status = 'completed'",
                "CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx "
                "ON idempotency_keys (created_at)",
                "CREATE INDEX IF NOT EXISTS webhook_deliveries_done_idx "
                "ON webhook_deliveries (created_at) WHERE status IN ('delivered', 'failed')",
            ],
            reverse_sql="",
        ),
        # A deleted job's prediction is still canceled at its own provider.
        ops.AddField(
            model_name='UpstreamCancel',
            name='provider',
            field=fields.CharField(null=True, max_length=32),
        ),
    ]
