from tortoise import migrations
from tortoise.migrations import operations as ops
from mediagen.jobs.states import JobStatus
from orjson import loads
from tortoise.fields.data import JSON_DUMPS
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Job',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('status', fields.CharEnumField(default=JobStatus.PENDING, description='PENDING: pending\nPROCESSING: processing\nRETRYING: retrying\nCOMPLETED: completed\nFAILED: failed', enum_type=JobStatus, max_length=16)),
                ('prompt', fields.TextField(unique=False)),
                ('parameters', fields.JSONField(default=dict, encoder=JSON_DUMPS, decoder=loads)),
                ('model', fields.CharField(null=True, max_length=200)),
                ('provider', fields.CharField(max_length=32)),
                ('result_key', fields.CharField(null=True, max_length=512)),
                ('outputs', fields.JSONField(default=list, encoder=JSON_DUMPS, decoder=loads)),
                ('error', fields.TextField(null=True, unique=False)),
                ('attempt', fields.IntField(default=0)),
                ('retry_count', fields.IntField(default=0)),
                ('prediction_id', fields.CharField(null=True, max_length=200)),
                ('dispatched_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('lease_expires_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('next_attempt_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('started_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'jobs', 'app': 'jobs', 'indexes': [Index(fields=['status', 'lease_expires_at'], name='jobs_status_lease_idx'), Index(fields=['status', 'next_attempt_at'], name='jobs_status_next_idx'), Index(fields=['created_at'], name='jobs_created_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
