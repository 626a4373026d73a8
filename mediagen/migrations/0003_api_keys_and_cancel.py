from tortoise import migrations
from tortoise.migrations import operations as ops
from mediagen.jobs.states import JobStatus
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('jobs', '0002_prediction_index')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ApiKey',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=100)),
                ('prefix', fields.CharField(db_index=True, max_length=16)),
                ('key_hash', fields.CharField(unique=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('revoked_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'api_keys', 'app': 'jobs', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='Job',
            name='status',
            field=fields.CharEnumField(default=JobStatus.PENDING, description='PENDING: pending\nPROCESSING: processing\nRETRYING: retrying\nCOMPLETED: completed\nFAILED: failed\nCANCELED: canceled', enum_type=JobStatus, max_length=16),
        ),
        ops.AddField(
            model_name='Job',
            name='api_key',
            field=fields.ForeignKeyField('jobs.ApiKey', source_field='api_key_id', null=True, db_constraint=True, to_field='id', related_name='jobs', on_delete=OnDelete.SET_NULL),
        ),
        ops.AddIndex(
            model_name='Job',
            index=Index(fields=['api_key_id', 'created_at', 'id'], name='jobs_key_created_idx'),
        ),
    ]
